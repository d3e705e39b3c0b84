"""Hot swap: ``vcascade serve`` reloads its artifact on SIGHUP.

The file the config names is read once, checked exactly as at start-up against the config
and the running tiers (``engine.factory.cascade_for_artifact``: models, decoding, dtype, a
remote's context length, learned rules), and only then swapped in — in one step on the
server's event loop, between requests (``Service.swap``): a request already running
finishes under the policy it started with, every later one runs under the new policy, none
under a half-loaded one. The monitor restarts from the new calibration. An artifact that
fails a check is refused with the reason (logged, counted in
``vcascade:artifact_reloads_total{outcome="refused"}``) and the old one keeps serving.
"""

from __future__ import annotations

import logging
import sys
import threading

from vcascade.engine.artifact import ArtifactError, guarantee_statement
from vcascade.engine.factory import cascade_for_artifact

from .monitoring import LiveArtifact

log = logging.getLogger("vcascade.server")


class Reloader:
    """Reloads ``config.artifact`` into ``service`` (on ``loop``, the server's runtime)."""

    def __init__(self, service, config, loop, force_artifact: bool = False):
        self.service, self.config, self.loop, self.force = service, config, loop, force_artifact
        self._lock = threading.Lock()

    def reload(self) -> bool:
        """Read, check and swap in the artifact; False (old one kept) when it is refused."""
        with self._lock:  # one reload at a time; a second SIGHUP waits for the first
            old = self.service.artifact
            try:
                artifact = LiveArtifact.read(self.config.artifact)
                cascade = cascade_for_artifact(self.config, artifact.data, self.service.cascade.tiers, self.force)
            except (ArtifactError, ValueError, KeyError, TypeError) as err:
                self.service.reloads.labels("refused").inc()
                message = (f"artifact reload refused: {err}; still serving "
                           f"{old.sha256[:12] if old else 'the previous policy'}")
                log.error(message)
                print(message, file=sys.stderr)
                return False
            self.loop.run(self.service.swap(cascade, artifact, guarantee_statement(artifact.data)))
            message = (f"artifact reloaded: {artifact.path} sha256 {artifact.sha256[:12]} (created {artifact.created})"
                       f"; policy: {cascade.policy.describe()}")
            log.warning(message)
            print(message, file=sys.stderr)
            return True

    def on_signal(self, signum, frame) -> None:
        """The SIGHUP handler: the work runs in a thread (a signal handler must return fast)."""
        threading.Thread(target=self.reload, name="vcascade-reload", daemon=True).start()


def reload_counter(registry):
    """``vcascade:artifact_reloads_total{outcome}``: swapped, refused."""
    from prometheus_client import Counter

    return Counter("vcascade:artifact_reloads", "Artifact reloads (SIGHUP), by outcome (swapped, refused)",
                   ["outcome"], registry=registry)
