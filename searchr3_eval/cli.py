"""Command line: ``searchr3-eval run | report | tasks | train``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from searchr3_eval.errors import UserError

DEFAULT_CACHE = Path(os.environ.get("SEARCHR3_CACHE", Path.home() / ".cache" / "searchr3-eval"))


def build_parser() -> argparse.ArgumentParser:
    from searchr3_eval.data import DEFAULT_TASK
    from searchr3_eval.models import DEFAULT_MODELS

    parser = argparse.ArgumentParser(prog="searchr3-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="score models on retrieval tasks, then write the leaderboard")
    run.add_argument("--tasks", default=DEFAULT_TASK, help=f"comma list of tasks or groups (BEIR); default {DEFAULT_TASK}")
    run.add_argument("--models", default=DEFAULT_MODELS, help=f"comma list of model specs; default {DEFAULT_MODELS}")
    run.add_argument("--data-dir", type=Path, help="folder holding BEIR-format task folders (corpus.jsonl, queries.jsonl, qrels/)")
    run.add_argument("--split", help="qrels split to evaluate (default: the task's test split)")
    run.add_argument("--output-dir", type=Path, default=Path("results"))
    run.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="embedding cache folder")
    run.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    run.add_argument("--overwrite", action="store_true", help="redo (model, task) pairs that already have results")
    run.add_argument("--offline", action="store_true", help="never download task data")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--top-k", type=int, default=100)
    run.add_argument("--reasoning", choices=["off", "on", "all"], default="off",
                     help="Search-R3 reasoning: off, on (queries reason), all (queries and documents)")
    run.add_argument("--max-length", type=int, default=512)
    run.add_argument("--max-new-tokens", type=int, default=64)
    run.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    run.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    run.add_argument("--add-embed-token", action="store_true", help="add an (untrained) embed token to models without one")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    report = sub.add_parser("report", help="write leaderboard tables and plots from existing results")
    report.add_argument("--output-dir", type=Path, default=Path("results"))

    tasks = sub.add_parser("tasks", help="list known tasks")
    tasks.add_argument("--data-dir", type=Path)

    train = sub.add_parser("train", help="train a Search-R3 model (see trainer/)")
    train.add_argument("stage", choices=["sft", "rl"])
    train.add_argument("--config", type=Path, required=True, help="YAML config")
    return parser


def command_run(args: argparse.Namespace) -> int:
    from searchr3_eval.cache import EmbeddingCache
    from searchr3_eval.data import load_task, resolve_task_names
    from searchr3_eval.models import ModelOptions, load_model, parse_model_specs
    from searchr3_eval.report import write_report
    from searchr3_eval.runner import evaluate_pair, result_path, write_result

    if args.batch_size < 1 or args.top_k < 1:
        raise UserError("--batch-size and --top-k must be at least 1")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UserError(f"--data-dir {args.data_dir} is not a folder")
    task_names = resolve_task_names(args.tasks, args.data_dir)
    specs = parse_model_specs(args.models)
    options = ModelOptions(
        batch_size=args.batch_size, reasoning=args.reasoning, max_length=args.max_length,
        max_new_tokens=args.max_new_tokens, dtype=args.dtype, backend=args.backend,
        add_embed_token=args.add_embed_token, show_progress=not args.quiet,
    )
    cache = None if args.no_cache else EmbeddingCache(args.cache_dir / "embeddings.sqlite")
    loaded_tasks = {}
    for spec in specs:
        todo = [t for t in task_names if args.overwrite or not result_path(args.output_dir, spec, t).exists()]
        for name in sorted(set(task_names) - set(todo)):
            print(f"skip {spec} on {name}: result exists (use --overwrite to redo)")
        if not todo:
            continue
        model = load_model(spec, options, cache)
        for name in todo:
            if name not in loaded_tasks:
                loaded_tasks[name] = load_task(name, args.data_dir, args.split, download=not args.offline)
            result = evaluate_pair(model, spec, loaded_tasks[name], args.top_k)
            path = write_result(args.output_dir, result)
            print(f"{result['model']} on {name}: nDCG@10 {result['scores']['ndcg_at_10']:.4f} -> {path}")
    for path in write_report(args.output_dir):
        print(f"wrote {path}")
    return 0


def command_tasks(args: argparse.Namespace) -> int:
    from searchr3_eval.data import BEIR_TASKS, DEFAULT_TASK

    print(f"{DEFAULT_TASK}\t(embedded)")
    for name, (folder, split) in sorted(BEIR_TASKS.items()):
        print(f"{name}\tBEIR {folder} ({split})")
    if args.data_dir and args.data_dir.is_dir():
        for folder in sorted(p for p in args.data_dir.iterdir() if (p / "corpus.jsonl").is_file()):
            print(f"{folder.name}\t(local: {folder})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return command_run(args)
        if args.command == "report":
            from searchr3_eval.report import write_report

            for path in write_report(args.output_dir):
                print(f"wrote {path}")
            return 0
        if args.command == "tasks":
            return command_tasks(args)
        from trainer.cli import run_stage

        return run_stage(args.stage, args.config)
    except UserError as exc:
        print(f"searchr3-eval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("searchr3-eval: interrupted; finished results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
