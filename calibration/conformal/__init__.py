"""Conformal calibration of deferral thresholds (numpy/scipy only; never imports vLLM).

A room of small modules, each readable beside its paper:

* ``losses``     the data (``CalibrationData``), routing as the deployed policy routes,
                 0/1 losses of a configuration, the single-threshold path
* ``bounds``     p-values (binomial, Hoeffding–Bentkus), Clopper–Pearson bounds, CRC's
                 budget, the smallest n that can certify α (``min_items_to_certify``)
* ``checks``     what can be fitted at all (``check_fittable``, ``FitError``), callable
                 before any engine starts; the fits call it too
* ``fits``       conformal risk control, fixed-sequence testing, Learn-then-Test,
                 ``fit_thresholds``, the realized-risk spread and the price table
* ``groups``     per-group (Mondrian) fits, ``fit_groups``
* ``statement``  the guarantee in words
* ``validity``   the many-split validity experiment, per group

Shapes: ``scores`` (n, K-1), ``correct`` (n, K), ``costs`` (n, K), ``skip_scores`` (n,);
a configuration is (K-1 thresholds [, skip threshold]). Tier k < K-1 keeps its answer
when ``score >= threshold``; a skip score ``< skip_threshold`` sends the item past tier 0.
"""

from .bounds import (P_VALUES, binomial_certifies, binomial_p_value, binomial_upper_bound, crc_budget,
                     crc_certifies, hoeffding_bentkus_p_value, max_certified_losses, min_items_to_certify, p_value,
                     p_values)
from .checks import (DEFAULT_DELTA, DELTA_SPLITS, FitError, check_fittable, check_level, fit_method, group_delta,
                     items_tested, min_items_for_fit)
from .fits import (CertificateError, Fit, _configurations, _grid_candidates, crc_threshold, fit_thresholds,
                   fixed_sequence_threshold, learn_then_test, price_of_guarantee, realized_risk_spread,
                   uses_threshold_path, verify_certificate)
from .groups import GroupFit, fit_groups, group_figures, group_labels, grouped_routing
from .losses import (TARGETS, CalibrationData, _split, always_escalate, answering_tier, conditional_quality_loss,
                     config_counts, expected_cost, item_losses, loss_if_accepted, paid, risk, routing, split_config,
                     threshold_path)
from .statement import TARGET_WORDS, group_guarantee, guarantee, target_words
from .validity import ValidityResult, validity_experiment

__all__ = [
    "CalibrationData", "CertificateError", "DEFAULT_DELTA", "DELTA_SPLITS", "Fit", "FitError", "GroupFit",
    "P_VALUES", "TARGETS", "TARGET_WORDS", "ValidityResult", "always_escalate", "answering_tier",
    "binomial_certifies", "binomial_p_value", "binomial_upper_bound", "check_fittable", "check_level",
    "conditional_quality_loss", "config_counts", "crc_budget", "crc_certifies", "crc_threshold", "expected_cost",
    "fit_groups", "fit_method", "fit_thresholds", "fixed_sequence_threshold", "group_delta", "group_figures",
    "group_guarantee", "group_labels", "grouped_routing", "guarantee", "hoeffding_bentkus_p_value", "item_losses",
    "items_tested", "learn_then_test", "loss_if_accepted", "max_certified_losses", "min_items_for_fit",
    "min_items_to_certify", "p_value", "p_values", "paid", "price_of_guarantee", "realized_risk_spread", "risk",
    "routing", "split_config", "target_words", "threshold_path", "uses_threshold_path", "validity_experiment",
    "verify_certificate",
]
