"""The processes behind one in-process engine, and how they go away together.

vLLM's ``AsyncLLM`` runs its engine core in a child process, which on CPU (and with any
multiprocessing executor) starts its own ``VLLM::Worker`` processes. When the core dies
abruptly (killed, out of memory) its workers are re-parented to PID 1; a worker busy in a
step does not notice (vLLM's death pipe is read between steps) and keeps its memory and
a core, outliving the program. ``EngineProcesses`` records the core and its descendants
once the engine is up, watches the core, and when it dies — or when the engine is shut
down — terminates every recorded process still alive (SIGTERM, then SIGKILL after a grace
period: a worker inside a long native computation runs no Python signal handler).
Processes are held as ``psutil.Process`` objects, so a recycled PID is never signalled.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import threading
from typing import Sequence

import psutil

log = logging.getLogger("vcascade.engine")

GRACE_SECONDS = 3.0


def descendants(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(processes: Sequence[psutil.Process]) -> list[psutil.Process]:
    """The processes still running (a zombie has exited: it only waits to be reaped)."""
    out = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def terminate(processes: Sequence[psutil.Process], grace: float = GRACE_SECONDS) -> list[psutil.Process]:
    """SIGTERM every live process, SIGKILL what is left after ``grace`` seconds; returns the
    processes that had to be killed."""
    running = alive(processes)
    for p in running:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, stubborn = psutil.wait_procs(running, timeout=grace)
    stubborn = alive(stubborn)
    for p in stubborn:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(stubborn, timeout=grace)
    return stubborn


class EngineProcesses:
    """An engine's core processes (``multiprocessing`` handles) and everything they started."""

    def __init__(self, name: str, cores: Sequence[multiprocessing.Process]):
        self.name = name
        self.cores = list(cores)
        self.processes = [p for core in self.cores if core.pid is not None for p in descendants(core.pid)]
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._watcher = None
        if self.cores:
            self._watcher = threading.Thread(target=self._watch, name=f"vcascade-watch-{name}", daemon=True)
            self._watcher.start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def _watch(self) -> None:
        sentinels = [core.sentinel for core in self.cores]
        while not self._stopped.is_set():
            if multiprocessing.connection.wait(sentinels, timeout=1.0):
                break
        if self._stopped.is_set():
            return
        left = alive(self.processes)
        if left:
            log.warning("tier %s: the vLLM engine core exited; stopping its %d remaining process(es) %s", self.name,
                        len(left), [p.pid for p in left])
        self.reap()

    def reap(self) -> None:
        """Stop every recorded process still alive (idempotent, any thread)."""
        with self._lock:
            terminate(self.processes)

    def expect_exit(self) -> None:
        """The engine is being shut down: its core's exit is no death (call before the shutdown,
        then ``reap`` after it for whatever it left behind)."""
        self._stopped.set()
