"""One-request scoring runs on one thread.

The controller scores one request at a time (a one-row GBT predict, one sentence through
MiniLM). Inside such small calls the OpenMP thread pools of scikit-learn and torch
only add spin-waiting, and on a CPU shared with the vLLM engine cores the spinning
threads wait for a core: measured on 2 busy cores, the per-request scoring took 136 ms of
CPU on average with the default pools and 6 ms limited to one thread (embedding 69 → 20 ms).
Batch scoring (calibration) keeps the pools.
"""

from __future__ import annotations

import contextlib
import functools
import sys

from threadpoolctl import ThreadpoolController


@functools.lru_cache(maxsize=4)
def _controller(modules_loaded: int) -> ThreadpoolController:
    """The process's loaded thread-pool libraries, inspected again whenever modules were
    imported since the last look (an import may load another OpenMP runtime, e.g. torch's
    for the embedding model); inspecting walks the loaded libraries, so it is cached."""
    return ThreadpoolController()


@contextlib.contextmanager
def single_threaded():
    """Limit OpenMP pools (scikit-learn's and torch's) to one thread for the block.

    OpenMP's thread count is per calling thread, so concurrent blocks in other threads
    neither see nor undo it: call it in the thread that does the work. BLAS pools are
    process-wide and left alone (one-row products do not use their threads)."""
    with _controller(len(sys.modules)).limit(limits=1, user_api="openmp"):
        yield
