"""vcascade engine: tiers under vLLM, confidence signals, and the cascade controller.

Entry points: ``load_config`` → ``build_cascade`` (real vLLM engines) → ``Cascade.run``.
"""

from .cascade import Cascade, Tier
from .config import CascadeConfig, ConfigError, TierConfig, load_config
from .policy import Policy
from .signals import get_signal, signal_names
from .types import Answer, Request, TierResult, TraceStep

__all__ = [
    "Answer", "Cascade", "CascadeConfig", "ConfigError", "Policy", "Request", "Tier",
    "TierConfig", "TierResult", "TraceStep", "get_signal", "load_config", "signal_names",
]
