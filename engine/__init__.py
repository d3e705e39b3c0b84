"""vcascade engine: tiers under vLLM (or remote vLLM servers), uncertainty signals and
learned deferral rules, and the cascade controller.

Entry points: ``load_config`` → ``build_cascade`` (started tiers) → ``Cascade.answer`` /
``answer_all`` / ``stream``; synchronous code runs them with ``runtime.run``.
"""

from .cascade import Cascade, Delta
from .config import CascadeConfig, ConfigError, EngineTierConfig, RemoteTierConfig, load_config
from .factory import build_cascade, build_policy
from .policy import Policy
from .runtime import run
from .types import Answer, Request, TierResult, TraceStep
from .uncertainty import get_signal, signal_names

__all__ = [
    "Answer", "Cascade", "CascadeConfig", "ConfigError", "Delta", "EngineTierConfig", "Policy", "RemoteTierConfig",
    "Request", "TierResult", "TraceStep", "build_cascade", "build_policy", "get_signal", "load_config", "run",
    "signal_names",
]
