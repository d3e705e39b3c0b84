"""Correctness of a model answer against reference answers: ``vcascade.engine.scoring``
(there, so that the server can score feedback with the same rules without importing the
calibration package). Three answer kinds: ``exact``, ``numeric``, ``choice``.
"""

from vcascade.engine.scoring import (KINDS, choice_letter, exact_match, is_correct, normalize, numeric_match,
                                     parse_number)

__all__ = ["KINDS", "choice_letter", "exact_match", "is_correct", "normalize", "numeric_match", "parse_number"]
