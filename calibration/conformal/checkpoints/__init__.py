"""Mid-generation deferral: decide at checkpoints inside the small tier's answer (numpy/scipy).

Setting. Two tiers, small and large. The small tier's greedy answer is scored by a prefix
rule after k_1 < … < k_m completion tokens ("checkpoints", e.g. 8, 16, 32, 64, 128) and
by the end-of-answer rule when it ends. At each checkpoint it reaches, an answer is

* **escalated** now: the small request is aborted (its cost is the prefix's, k_j tokens)
  and the large tier answers;
* **committed**: the small answer is kept — it runs to its end and can no longer escalate;
* or it **continues** to the next checkpoint.

An answer *reaches* checkpoint j when it has at least k_j tokens (``lengths >= k_j``: at
the moment its k_j-th token arrives, also when that token is its last). One that ends
before k_j skips the remaining checkpoints and the end rule decides: keep when
``end_score >= end`` ("end-keep"), else escalate ("end-escalate", the whole small answer
paid). With a pre-generation skip rule ("checkpoint 0") an item whose skip score is
``< skip`` never visits the small tier ("skip"), as in ``losses.routing``.

Precedence at a checkpoint: **escalate first**, then commit:

    escalate  if score <  escalate[j]
    commit    elif score >= commit[j]
    continue  otherwise

so overlapping bands resolve to the large tier, the safe side for every target.
``commit[j] = +inf`` never commits at j, ``escalate[j] = -inf`` never escalates early at j;
``escalate[j] = +inf`` escalates every answer reaching j. Scores may be ``-inf`` (empty
answers), never ``+inf`` (+inf is the threshold that keeps nothing) and, at a reached
checkpoint, never NaN.

With greedy decoding the first k tokens of a cached full answer are exactly what the
engine has produced at checkpoint k (``vcascade.engine.uncertainty.prefix``), so every
decision, loss and cost below is computed from cached full answers. Token-level deferral
in this spirit: Gupta et al., ICLR 2024 (token-level uncertainty for cascades) and
Narasimhan et al., ICLR 2025 (speculative cascades).

Losses (0/1, the kept answer is the small one, else the large one's; ``losses._losses_of``):
``accept-error`` = kept ∧ small wrong, ``quality-loss`` = kept ∧ small wrong ∧ large right
(the cascade wrong where the large tier is right), ``selective-error`` as a figure only.

Calibration: a configuration has 2m + 2 thresholds (commit and escalate per checkpoint,
end, skip); a grid over that space is far too large to test. Instead a *family* — an
ordered sequence of configurations g = 0, 1, …, G−1, ``path[0]`` = always escalate — is
fixed before the calibration split is seen, from a disjoint split. Two families:

* ``pareto_family`` (the default of ``calibration.checkpointing``): **Pareto Testing**
  (Laufer-Goldshtein, Fisch, Barzilay, Jaakkola, "Efficiently Controlling Multiple Risks
  with Pareto Testing", ICLR 2023). On the selection split only, a large candidate set —
  the union of the quantile paths of many shapes (commit shares including 0 = never
  commit, escalate shares including 0 = never escalate early, skip shares 0..1), a grid of
  end-only configurations over end × skip quantile levels, and optionally one-checkpoint
  refinements of the front — is scored by empirical risk and mean cost; the Pareto front
  (no other candidate has lower-or-equal risk and lower cost) ordered by selection-split
  risk ascending, always-escalate first, is the testing sequence. Thresholds are no longer
  tied to one aggressiveness level, so an end-only configuration with any skip level, or
  one that commits at a single checkpoint, can be on the sequence. Kept sets are *not*
  nested along it.
* ``checkpoint_family`` / ``select_family``: one quantile path (all thresholds tied to one
  aggressiveness level), its shape chosen on the selection split; kept sets are nested.

``fit_checkpoints`` runs fixed-sequence testing along either (Learn-then-Test,
Angelopoulos, Bates, Candès, Jordan, Lei 2021, its fixed-sequence procedure; Bauer 1991):
test H_g: R(g) > α with the exact binomial p-value P(Bin(n, α) <= k_g) (or
Hoeffding–Bentkus) at level δ for g = 0, 1, … and stop at the first H_g not rejected. The
order is fixed in advance, so this controls the family-wise error at δ whatever the risks along the path (no monotonicity needed): with
probability >= 1 − δ over the calibration draw, *every* rejected configuration has
R <= α. The deployed one is therefore any rejected configuration, chosen by any rule —
``select="last"`` (the least conservative, the default) or ``select="cheapest"`` (lowest
mean calibration cost among the rejected). What breaks the guarantee: counting a
configuration after the first non-rejected one (however small its own p-value), reordering
the path after seeing calibration data, or building the path on the calibration split.
Nothing rejected (fewer than ``bounds.min_items_to_certify`` items): always escalate.
The chosen configuration's losses are recomputed through ``route`` (the deployed rule)
and a mismatch with the tested counts raises ``fits.CertificateError``.

What serving must do to deploy a configuration as certified (not implemented here): stream
the small tier greedily under the calibrated decoding and ``max_tokens``; when the answer
reaches k_j tokens (also when the k_j-th is its last), score the prefix with the same
prefix rule and apply escalate-then-commit; on escalation abort the small request and
start the large one; a committed answer streams to its end; an answer that ends between
checkpoints goes to the end rule.

Shapes: n items, m checkpoints, G configurations on a path.

A room of small modules, one job each:

* ``data``     ``CheckpointData``, ``CheckpointConfig``, ``CheckpointFamily``, ``token_costs``,
               ``commit_when_decided``
* ``routing``  the deployed rule: ``route``, ``route_groups``, ``Routing``, the losses and the
               certificate re-check, the same rule over a whole family (``path_*``)
* ``paths``    the testing sequences: ``checkpoint_family``, ``select_family``,
               ``pareto_family`` / ``pareto_front``
* ``fit``      fixed-sequence testing along a family: ``fit_checkpoints``, ``fit_checkpoints_naive``
* ``figures``  realized figures of a configuration or per-group policy: ``checkpoint_figures``
"""

# Names outside ``__all__`` (decision codes, METHOD, the Pareto shares, ``commit_when_decided``,
# ``_quantiles``) are re-exported for the modules and tests that read them as ``checkpoints.X``.
from .data import CheckpointConfig, CheckpointData, CheckpointFamily, commit_when_decided, token_costs
from .figures import checkpoint_figures
from .fit import FIT_TARGETS, METHOD, SELECTIONS, CheckpointFit, fit_checkpoints, fit_checkpoints_naive
from .paths import (PARETO_COMMIT_SHARES, PARETO_ESCALATE_SHARES, PARETO_SKIP_SHARES, _quantiles, checkpoint_family,
                    pareto_family, pareto_front, select_family)
from .routing import (COMMIT, DECISION_KINDS, END_ESCALATE, END_KEEP, ESCALATE, SKIP, Routing, checkpoint_losses,
                      item_losses, path_costs, path_counts, path_routing, route, route_groups,
                      verify_checkpoint_certificate)

__all__ = [
    "DECISION_KINDS", "FIT_TARGETS", "SELECTIONS", "CheckpointConfig", "CheckpointData", "CheckpointFamily",
    "CheckpointFit", "Routing", "checkpoint_family", "checkpoint_figures", "checkpoint_losses", "fit_checkpoints",
    "fit_checkpoints_naive", "item_losses", "pareto_family", "pareto_front", "path_costs", "path_counts",
    "path_routing", "route", "route_groups", "select_family", "token_costs", "verify_checkpoint_certificate",
]
