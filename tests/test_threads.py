"""Per-request scoring runs with one OpenMP thread, in the calling thread only."""

import threading

import sklearn.ensemble  # noqa: F401  (loads scikit-learn's OpenMP runtime)
from threadpoolctl import threadpool_info

from vcascade.engine.uncertainty.threads import single_threaded


def _openmp_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"]


def test_single_threaded_limits_openmp_in_this_thread_and_restores():
    before = _openmp_threads()
    assert before, "no OpenMP runtime loaded"
    seen_elsewhere = []
    with single_threaded():
        assert set(_openmp_threads()) == {1}
        other = threading.Thread(target=lambda: seen_elsewhere.extend(_openmp_threads()))
        other.start()
        other.join()
    assert _openmp_threads() == before
    assert seen_elsewhere == before  # another thread keeps its pools meanwhile
