"""``vcascade serve``: the OpenAI-compatible server over the configured cascade.

Tiers start first (each engine on its own cores), then uvicorn serves the app on the
process's runtime loop. SIGTERM or Ctrl-C stops accepting connections, lets the requests in
flight finish (uvicorn's graceful shutdown), then shuts the engines down. SIGHUP reloads
the artifact (``server.reload``): checked as at start-up, swapped in between requests,
refused with the reason (the old one keeps serving) when it does not fit the running tiers.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

DEFAULT_PORT = 8000


def cmd_serve(args) -> int:
    import uvicorn

    from vcascade.engine.artifact import guarantee_statement, read_artifact
    from vcascade.engine.config import load_config
    from vcascade.engine.factory import build_cascade
    from vcascade.engine.runtime import runtime
    from vcascade.engine.tiers import shutdown_tiers

    from .app import Settings, create_app
    from .monitoring import GuardSettings, LiveArtifact

    if args.max_queued is not None and args.max_queued < 1:
        raise ValueError(f"--max-queued must be >= 1, got {args.max_queued}")
    if not 0.0 < args.alarm_level < 1.0:
        raise ValueError(f"--alarm-level must be in (0, 1), got {args.alarm_level}")
    if not 0.0 <= args.audit_share <= 1.0:
        raise ValueError(f"--audit-share must be in [0, 1], got {args.audit_share}")
    config = load_config(args.config).with_artifact(args.artifact)
    loop = runtime()
    print(f"starting {len(config.tiers)} tier(s): {', '.join(t.name for t in config.tiers)} ...", file=sys.stderr)
    cascade = loop.run(build_cascade(config, warmup_batch=args.warmup_batch, force_artifact=args.force_artifact))
    guarantee = guarantee_statement(read_artifact(config.artifact)) if config.artifact else None
    artifact = LiveArtifact.read(config.artifact) if config.artifact else None
    monitor = None if not args.monitor else GuardSettings(
        alarm_level=args.alarm_level, audit_share=args.audit_share, audit_concurrency=args.audit_concurrency,
        audit_max_tokens=args.audit_max_tokens or None)
    settings = Settings(served_model_name=args.served_model_name,
                        api_key=args.api_key or os.environ.get("VCASCADE_API_KEY") or None,
                        max_queued=args.max_queued, max_body_bytes=args.max_body_bytes,
                        decision_log=Path(args.decision_log) if args.decision_log else None, guarantee=guarantee,
                        docs=args.docs, artifact=artifact, monitor=monitor,
                        decision_log_max_bytes=args.decision_log_max_bytes)
    app = create_app(cascade, settings)
    guard = app.state.service.guard
    if guard is not None:
        m = guard.monitor
        print(f"monitoring the guarantee: {m.n_tests} anytime-valid tests at {m.test_level:.2g} each (false-alarm "
              f"level {m.alarm_level} for the whole run); audits: "
              + (f"{args.audit_share:.0%} of kept answers" if args.audit_share else "off"), file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, loop="none", lifespan="off",
                                           log_level="info" if args.verbose else "warning",
                                           access_log=args.verbose, timeout_graceful_shutdown=args.drain_timeout))

    def stop(signum, frame):
        print(f"received {signal.Signals(signum).name}: draining requests in flight, then exiting", file=sys.stderr)
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if config.artifact:  # SIGHUP: read the artifact again, check it as at start-up, swap it in between requests
        from .reload import Reloader

        signal.signal(signal.SIGHUP, Reloader(app.state.service, config, loop, args.force_artifact).on_signal)
    ids = ", ".join([settings.served_model_name, *(t.name for t in cascade.tiers)])
    print(f"serving on http://{args.host}:{args.port}/v1 (models: {ids}); policy: {cascade.policy.describe()}",
          file=sys.stderr)
    try:
        loop.run(server.serve())
    finally:
        if app.state.service.guard is not None:  # audits still running are cancelled, not awaited
            loop.run(app.state.service.guard.close())
        loop.run(shutdown_tiers(cascade.tiers))
    return 0


def register_serve(sub) -> None:
    from vcascade.engine.cli import add_cascade_options

    p = add_cascade_options(sub.add_parser("serve", help="serve the cascade over an OpenAI-compatible HTTP API"),
                            tier=False)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: env VCASCADE_API_KEY)")
    p.add_argument("--max-queued", type=int, help="admit at most N unfinished requests; more get 503 + Retry-After")
    p.add_argument("--served-model-name", default="vcascade", help="model id of the cascade (default vcascade)")
    p.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="larger request bodies get 413")
    p.add_argument("--decision-log", help="append one JSON line per request: the request as the tiers saw it, its "
                                          "answer, tier, decision, latency, overhead (vcascade calibrate --from-log)")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=True,
                   help="serve /docs (Swagger UI, no CDN) and /openapi.json; --no-docs for exposed deployments "
                        "(with --api-key both need the key anyway)")
    p.add_argument("--decision-log-max-bytes", type=int, default=256 * 2**20,
                   help="rotate the decision log to FILE.1 .. FILE.3 past this size (default 256 MiB; 0: never)")
    p.add_argument("--alarm-level", type=float, default=0.01,
                   help="false-alarm probability of the guarantee monitor over the whole run (default 0.01)")
    p.add_argument("--monitor", action=argparse.BooleanOptionalAction, default=True,
                   help="monitor the guarantee (needs an artifact with a 'monitor' section); --no-monitor: off")
    p.add_argument("--audit-share", type=float, default=0.0,
                   help="share of answers kept by a smaller tier that the last tier also answers, in the "
                        "background, to bound the quality loss (default 0: no audits)")
    p.add_argument("--audit-concurrency", type=int, default=2, help="audits running at once (default 2)")
    p.add_argument("--audit-max-tokens", type=int, default=1_000_000,
                   help="stop auditing once the audits spent this many tokens (0: no cap)")
    p.add_argument("--drain-timeout", type=int, default=60, help="seconds to let requests finish on SIGTERM")
    p.add_argument("--warmup-batch", type=int, default=8, help="concurrent warm-up requests per engine")
    p.set_defaults(func=cmd_serve)
