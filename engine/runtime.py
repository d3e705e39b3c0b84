"""The event loop every tier of this process runs on, for callers that are not async.

vLLM's ``AsyncLLM`` and the ``openai`` async client bind to the event loop that first uses
them, so a process keeps one loop for all its tiers: a daemon thread runs it, and
synchronous code (the CLI, the calibration job, benchmarks, tests) hands it coroutines
with ``run``. The server runs uvicorn on the same loop, so it can share tiers with them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Awaitable, TypeVar

T = TypeVar("T")


class Runtime:
    """An asyncio loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="vcascade-loop", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Run the loop for the life of the process. A KeyboardInterrupt or SystemExit raised
        inside a coroutine reaches the caller through its future; the loop keeps running."""
        while True:
            try:
                self.loop.run_forever()
                return
            except (KeyboardInterrupt, SystemExit):
                continue

    def submit(self, coro: Awaitable[T]) -> "concurrent.futures.Future[T]":
        """Schedule ``coro`` on the loop; returns a future to wait on."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result; Ctrl-C cancels it."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except KeyboardInterrupt:
            future.cancel()
            raise


_RUNTIME: Runtime | None = None
_LOCK = threading.Lock()


def runtime() -> Runtime:
    """This process's runtime (started on first use)."""
    global _RUNTIME
    with _LOCK:
        if _RUNTIME is None:
            _RUNTIME = Runtime()
        return _RUNTIME


def run(coro: Awaitable[T], timeout: float | None = None) -> T:
    """Run ``coro`` on this process's runtime loop and return its result."""
    return runtime().run(coro, timeout)
