"""The uncertainty engine: confidence signals, semantic entropy, answer equivalence and
sampling, features, and the deferral rules (built-in signals and learned rules) that
score a tier's answer."""

from .rules import Query, Rule, SignalRule, SkipRule
from .signals import SAMPLING_SIGNALS, SIGNALS, get_signal, signal_names

__all__ = ["Query", "Rule", "SAMPLING_SIGNALS", "SIGNALS", "SignalRule", "SkipRule", "get_signal", "signal_names"]
