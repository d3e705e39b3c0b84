"""The guarantee in words (what an operator reads in the artifact, the CLI and /v1/models).

The quality-loss target bounds a *joint* probability, P(cascade wrong ∧ largest right),
and the sentence says so, with what it implies: accuracy at most α below always calling
the largest tier. The conditional share P(cascade wrong | largest right) is a different,
larger number with no certificate; ``conditional_quality_loss`` computes it as a figure.
"""

from __future__ import annotations

LARGEST = "the largest tier"


def target_words(target: str, alpha: float, largest: str | None = None, per_group: bool = False) -> str:
    """``<what> <= α`` for ``target``, naming the largest tier when known; ``per_group``
    conditions the probability on the request's group."""
    big = largest or LARGEST
    always = f"always-{largest}" if largest else "always calling the largest tier"
    given, among = (" | group", " within the group") if per_group else ("", "")
    if target == "quality-loss":
        return (f"P(cascade wrong and {big} right{given}) <= {alpha:g}, i.e. accuracy{among} at most {alpha:g} "
                f"below {always}")
    if target == "accept-error":
        return f"P(answered by a smaller tier and wrong{given}) <= {alpha:g}"
    if target == "selective-error":
        return f"P(wrong | answered by a smaller tier{', group' if per_group else ''}) <= {alpha:g}"
    raise ValueError(f"unknown target {target!r}")


TARGET_WORDS = {  # kept for callers that want the bare quantity
    "accept-error": "P(answered by a smaller tier and wrong)",
    "quality-loss": "P(cascade wrong and the largest tier right)",
    "selective-error": "P(wrong | answered by a smaller tier)",
}


def guarantee(target: str, alpha: float, delta: float | None, method: str, largest: str | None = None) -> dict:
    """The guarantee a fit gives, as a record with a sentence an operator can read.

    The marginal form (``delta=None``) holds on average over calibration draws; its
    statement points to the realized-risk spread. The high-probability form carries no
    spread: the share of resampled calibrations above α is <= δ by construction.
    """
    what = target_words(target, alpha, largest)
    if delta is None:
        return {"kind": "marginal", "method": method,
                "statement": f"on average over calibration draws, {what} "
                             "(a single calibration can land above it; see realized-risk spread)"}
    return {"kind": "high-probability", "method": method,
            "statement": f"with probability >= {1 - delta:.0%} over the calibration draw, {what}"}


def group_guarantee(target: str, alpha: float, delta: float | None, group_delta: float | None, delta_split: str,
                    methods: dict[str, str], conservative: str, largest: str | None = None) -> dict:
    """The guarantee of a per-group (Mondrian) fit: each group's risk, conditional on the group."""
    what = target_words(target, alpha, largest, per_group=True)
    names = sorted(methods)
    g = len(names)
    unknown = (f"; a request of any other group is served with the most conservative group's policy "
               f"({conservative!r}) and no guarantee")
    if delta is None:
        statement = f"for each group ({', '.join(names)}) separately, on average over calibration draws, {what}"
    elif delta_split == "bonferroni":
        statement = (f"with probability >= {1 - delta:.0%} over the calibration draw, simultaneously for every "
                     f"group ({', '.join(names)}), {what} (each group fitted at δ/{g} = {group_delta:.3g})")
    else:
        together = max(0.0, 1 - g * delta)
        statement = (f"for each group ({', '.join(names)}) separately, with probability >= {1 - delta:.0%} over "
                     f"the calibration draw, {what} (per-group δ; all {g} at once with probability >= "
                     f"{together:.0%} by the union bound)")
    return {"kind": "marginal" if delta is None else "high-probability", "conditional_on": "group",
            "method": methods[names[0]] if len(set(methods.values())) == 1 else methods,
            "delta_split": None if delta is None else delta_split, "delta_per_group": group_delta,
            "groups": names, "unknown_group": conservative, "statement": statement + unknown}
