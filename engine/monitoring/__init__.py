"""Monitoring the guarantee in production: anytime-valid tests that served traffic is still
exchangeable with the calibration items, confidence sequences for rates, and audit bounds.

Pure numpy/scipy (no vLLM, no server): the server feeds a ``Monitor`` every decision, the
calibration job writes the reference it compares with (``monitor_section``), the offline
benchmark replays cached generations through the same code.

- ``martingales``: conformal p-values and the Simple Jumper test martingale (Vovk et al.);
- ``sequences``: beta-binomial confidence sequences (Howard et al. 2021), DKW bands, the
  audit bound (inverse-propensity betting, Waudby-Smith & Ramdas 2024);
- ``reference``: the artifact's ``"monitor"`` section and its routing under a policy;
- ``monitor``: the ``Monitor`` and its ε split.
"""

from .martingales import (JUMP, RankMartingale, SimpleJumper, betting_functions, conformal_p_value,
                          simple_mixture_log)
from .monitor import DEFAULT_ALARM_LEVEL, STATES, Decision, Monitor, Observed
from .reference import MAX_STORED, Reference, monitor_section, route, subsample
from .sequences import audit_upper_bound, bernoulli_covers, bernoulli_cs, dkw_halfwidth

__all__ = ["DEFAULT_ALARM_LEVEL", "JUMP", "MAX_STORED", "STATES", "Decision", "Monitor", "Observed", "RankMartingale",
           "Reference", "SimpleJumper", "audit_upper_bound", "bernoulli_covers", "bernoulli_cs", "betting_functions",
           "conformal_p_value", "dkw_halfwidth", "monitor_section", "route", "simple_mixture_log", "subsample"]
