"""Clustering and semantic-entropy signals against hand-computed numbers."""

import math

import numpy as np
import pytest

from pydantic import ValidationError

from vcascade.engine.config import SamplesConfig
from vcascade.engine.uncertainty.equivalence import cluster, get_equivalence
from vcascade.engine.uncertainty.sampling import assign_clusters, is_decisive, largest_cluster_text
from vcascade.engine.uncertainty.signals import get_signal
from vcascade.engine.types import Sample, TierResult


def result(greedy: str, samples: list[tuple[str, float]]) -> TierResult:
    """Samples as (text, mean token logprob); each sample has 2 tokens."""
    return TierResult(greedy, [1], [-0.1], [[(1, -0.1)]], -0.1, "stop", 5, 1, 0.1,
                      samples=[Sample(t, [1, 2], [lp, lp], 2 * lp) for t, lp in samples])


def clustered(greedy, samples, equivalence="normalized"):
    r = result(greedy, samples)
    assign_clusters([r], get_equivalence(equivalence))
    return r


def signal(name, r):
    return get_signal(name)(r)


def test_kuhn_clustering_joins_first_equivalent_representative():
    eq = get_equivalence("normalized")
    texts = ["Paris", "paris.", "Lyon", "The Paris", "Nice", "lyon"]
    assert cluster(eq.keys(texts), eq) == [0, 0, 1, 0, 2, 1]


def test_numeric_and_choice_equivalence():
    num = get_equivalence("numeric")
    assert cluster(num.keys(["1,600", "It is 1600.", "$1600.00", "16", "none", "None!"]), num) == [0, 0, 0, 1, 2, 2]
    choice = get_equivalence("choice")
    assert cluster(choice.keys(["B", "(B) water", "The answer is B", "C.", "no idea"]), choice) == [0, 0, 0, 1, 2]


def test_discrete_entropy_hand_computed():
    # clusters {Paris: 3, Lyon: 1} of 4 -> H = -(3/4 ln 3/4 + 1/4 ln 1/4)
    r = clustered("Paris", [("Paris", -0.1), ("Lyon", -0.1), ("paris", -0.1), ("Paris!", -0.1)])
    assert r.clusters == [0, 1, 0, 0] and r.greedy_cluster == 0
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert signal("discrete_se", r) == pytest.approx(-h)
    assert signal("num_clusters", r) == -2
    assert signal("greedy_agreement", r) == pytest.approx(0.75)


def test_weighted_entropy_uses_length_normalized_likelihoods():
    # weights exp(-0.1), exp(-2.0), exp(-0.1) for clusters A, B, A
    r = clustered("A", [("A", -0.1), ("B", -2.0), ("A", -0.1)])
    wa, wb = 2 * math.exp(-0.1), math.exp(-2.0)
    pa, pb = wa / (wa + wb), wb / (wa + wb)
    assert signal("weighted_se", r) == pytest.approx(pa * math.log(pa) + pb * math.log(pb))
    assert signal("weighted_se", r) > signal("discrete_se", r)  # the likely cluster dominates more


def test_one_cluster_is_maximal_confidence():
    r = clustered("Canberra", [("Canberra", -0.3)] * 5)
    assert signal("discrete_se", r) == 0.0 and signal("weighted_se", r) == 0.0
    assert signal("num_clusters", r) == -1 and signal("greedy_agreement", r) == 1.0


def test_all_distinct():
    r = clustered("x", [("a", -0.1), ("b", -0.1), ("c", -0.1), ("d", -0.1)])
    assert signal("discrete_se", r) == pytest.approx(-math.log(4))
    assert signal("num_clusters", r) == -4 and r.greedy_cluster is None
    assert signal("greedy_agreement", r) == 0.0


def test_ties_pick_the_earliest_cluster():
    r = clustered("b", [("a", -0.1), ("b", -0.1), ("a", -0.1), ("b", -0.1)])
    assert signal("discrete_se", r) == pytest.approx(-math.log(2))
    assert largest_cluster_text(r) == "a"
    assert is_decisive(r, 0.5)  # greedy 'b' ties for largest and holds half
    assert not is_decisive(r, 0.75)


def test_empty_answers_cluster_together():
    r = clustered("", [("", -0.5), ("", -0.5), ("Paris", -0.1)])
    assert r.clusters == [0, 0, 1] and r.greedy_cluster == 0
    assert signal("greedy_agreement", r) == pytest.approx(2 / 3)
    zero = result("", [("", 0.0)])
    zero.samples[0] = Sample("", [], [], 0.0)  # a zero-token sample has likelihood weight 1
    assign_clusters([zero], get_equivalence("normalized"))
    assert signal("weighted_se", zero) == 0.0


def test_decisive_agreement_rule():
    assert is_decisive(clustered("Paris", [("Paris", -0.1)] * 3), 1.0)
    assert not is_decisive(clustered("Paris", [("Paris", -0.1), ("Paris", -0.1), ("Lyon", -0.1)]), 1.0)
    assert is_decisive(clustered("Paris", [("Paris", -0.1), ("Paris", -0.1), ("Lyon", -0.1)]), 0.6)
    assert not is_decisive(clustered("Rome", [("Paris", -0.1)] * 3), 0.5)  # samples agree, not with greedy


def test_semantic_signal_without_samples_is_an_error():
    with pytest.raises(ValueError, match="needs sampled answers"):
        signal("discrete_se", result("x", []))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "greater than or equal to 1"),
        ({"n": 40, "max_n": 32}, "above the configured cap max_n = 32"),
        ({"n": 5, "initial": 6}, "initial must be in [1, n = 5]"),
        ({"equivalence": "nli"}, "unknown equivalence 'nli'"),
        ({"temperature": 0.0}, "greater than 0"),
        ({"answer": "vote"}, "'greedy' or 'largest_cluster'"),
    ],
)
def test_bad_sampling_setups_are_rejected(kwargs, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SamplesConfig(**kwargs)


def test_config_errors_name_the_samples_block():
    from vcascade.engine.config import ConfigError, parse_config

    tiers = [{"name": "a", "model": "x", "threshold": 0.0, "samples": {"n": 64}}, {"name": "b", "model": "y"}]
    with pytest.raises(ConfigError, match=r"tiers\[0\].samples: n = 64 is above the configured cap"):
        parse_config({"tiers": tiers}, "c.yaml")
    tiers[0]["samples"] = {"n": 4, "equivalence": "bogus"}
    with pytest.raises(ConfigError, match="unknown equivalence 'bogus'"):
        parse_config({"tiers": tiers}, "c.yaml")
    del tiers[0]["samples"]
    with pytest.raises(ConfigError, match=r"tiers\[0\].samples: signal 'discrete_se' needs sampled answers"):
        parse_config({"signal": "discrete_se", "tiers": tiers}, "c.yaml")


def test_embedding_equivalence_groups_paraphrases():
    eq = get_equivalence("embedding:0.8")
    texts = ["The capital of France is Paris.", "Paris is the capital of France.", "Bananas are yellow.", ""]
    assert cluster(eq.keys(texts), eq) == [0, 0, 1, 2]
    with pytest.raises(KeyError, match="bad embedding equivalence"):
        get_equivalence("embedding:high")
    vectors = np.stack([k for k in eq.keys(texts[:2])])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
