"""The subcommands of ``searchr3-eval``: the parser and one handler each (``cli.main`` sets up the process first)."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from searchr3_eval import distributed
from searchr3_eval.atomic import atomic_write_text
from searchr3_eval.cache import default_cache_dir
from searchr3_eval.data import AGGREGATES, BEIR_TASKS, DEFAULT_TASK, check_data_dir
from searchr3_eval.errors import UserError
from searchr3_eval.models import DEFAULT_MODELS
from searchr3_eval.models.options import add_arguments, from_arguments
from searchr3_eval.page import write_page
from searchr3_eval.report import Significance, write_report
from searchr3_eval.runner import DEFAULT_OUTPUT, DEFAULT_TOP_K, evaluate
from searchr3_eval.verify import format_matrix, verify

PROG = "searchr3-eval"
DESCRIPTION = "Score embedding and BM25 retrievers on BEIR/MTEB retrieval tasks, and train Search-R3 models."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", allow_abbrev=False, help="score models on retrieval tasks, then write the leaderboard")
    run.add_argument("--tasks", default=DEFAULT_TASK, help=f"comma list of tasks or groups (BEIR); default {DEFAULT_TASK}")
    run.add_argument("--models", default=DEFAULT_MODELS, help=f"comma list of model specs; default {DEFAULT_MODELS}")
    run.add_argument("--data-dir", type=Path, help="folder holding BEIR-format task folders (corpus.jsonl, queries.jsonl, qrels/)")
    run.add_argument("--split", help="qrels split to evaluate (default: the task's test split)")
    run.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    run.add_argument("--cache-dir", type=Path, help="embedding cache folder (default $SEARCHR3_CACHE, else ~/.cache/searchr3-eval, which also keeps converted GGUF models)")
    run.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    run.add_argument("--overwrite", action="store_true", help="redo results that already exist")
    run.add_argument("--offline", action="store_true", help="never download task data")
    run.add_argument("--skip-missing", action="store_true", help="skip BEIR sets whose data is missing (offline) without failing")
    run.add_argument("--baseline", help="model spec or row label the report's significance tests compare with (default bm25)")
    run.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    add_arguments(run)
    run.add_argument("--quiet", action="store_true", help="no progress bars (ours or the libraries')")

    report = sub.add_parser("report", allow_abbrev=False, help="write leaderboard tables and plots from existing results")
    report.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    report.add_argument("--baseline", help="model spec or row label for the significance tests (default bm25)")
    report.add_argument("--test", default="t", help="paired test against the baseline: t (t-test) or permutation "
                        "(randomisation test); default t")
    report.add_argument("--correction", default="bh", help="over the model x task grid: bh (Benjamini-Hochberg) or "
                        "none; default bh")

    page = sub.add_parser("page", allow_abbrev=False, help="generate the results page (README.md) from page.yaml")
    page.add_argument("--results-dir", type=Path, default=DEFAULT_OUTPUT, help="default results")
    page.add_argument("--spec", type=Path, help="page spec (default <results-dir>/page.yaml)")

    verify = sub.add_parser("verify", allow_abbrev=False,
                            help="re-run the reproducible conditions and print a pass/fail matrix")
    verify.add_argument("--data-dir", type=Path, required=True, help="folder holding the BEIR task folders")
    verify.add_argument("--conditions", type=Path, help="conditions YAML (default: the packaged conditions.yaml)")
    verify.add_argument("--models", help="only these conditions, by name or model spec (comma list)")
    verify.add_argument("--tasks", help="only rows of these tasks (comma list)")
    verify.add_argument("--fast", action="store_true", help="only the rows marked fast (what CI runs)")
    verify.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT / "verify")
    verify.add_argument("--cache-dir", type=Path)
    verify.add_argument("--quiet", action="store_true")

    tasks = sub.add_parser("tasks", allow_abbrev=False, help="list known tasks")
    tasks.add_argument("--data-dir", type=Path)

    train = sub.add_parser("train", allow_abbrev=False, help="train a Search-R3 model (see trainer/)")
    train.add_argument("stage", choices=["data", "sft", "rl"])
    train.add_argument("--config", type=Path, required=True, help="YAML config")
    return parser


def command_run(args: argparse.Namespace) -> int:
    options = from_arguments(args, show_progress=not args.quiet)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    try:
        summary = evaluate(
            args.models, args.tasks, args.output_dir, options=options, data_dir=args.data_dir, split=args.split,
            top_k=args.top_k, overwrite=args.overwrite, cache_dir=cache_dir, download=not args.offline,
            skip_missing=args.skip_missing, baseline=args.baseline,
        )
    finally:
        distributed.shutdown()
    for path in summary.report_files:
        print(f"wrote {path}")
    if summary.missing_tasks:
        print(f"skipped {len(summary.missing_tasks)} task(s) without data: {', '.join(summary.missing_tasks)}")
    return 0


def command_verify(args: argparse.Namespace) -> int:
    checks = verify(args.data_dir, args.conditions, names=args.models, tasks=args.tasks, fast=args.fast,
                    output_dir=args.output_dir, cache_dir=args.cache_dir or default_cache_dir(),
                    show_progress=not args.quiet)
    matrix = format_matrix(checks)
    print(matrix)
    atomic_write_text(args.output_dir / "matrix.md", matrix + "\n")  # the results page includes it
    return 0 if all(c.passed for c in checks) else 1


def command_tasks(args: argparse.Namespace) -> int:
    check_data_dir(args.data_dir)
    print(f"{DEFAULT_TASK}\t(embedded)")
    for name, (folder, split) in sorted(BEIR_TASKS.items()):
        print(f"{name}\tBEIR {folder} ({split})")
    for name, members in AGGREGATES.items():
        print(f"{name}\tgroup: mean of {len(members)} CQADupStack forums")
    if args.data_dir:
        for folder in sorted(p for p in args.data_dir.iterdir() if (p / "corpus.jsonl").is_file()):
            print(f"{folder.name}\t(local: {folder})")
    return 0


def plugin_command(name: str) -> Callable:
    """A subcommand an installed package registers in the entry-point group ``searchr3_eval.commands`` (the trainer
    registers ``train``), so the library itself never imports the trainer."""
    found = entry_points(group="searchr3_eval.commands", name=name)
    if not found:
        raise UserError(f"'{name}' is provided by the trainer, which is not installed here (pip install -e . from the "
                        "repository)")
    return next(iter(found)).load()


def run_command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    ours = logging.getLogger("searchr3_eval")
    ours.handlers = [handler]
    ours.setLevel(logging.WARNING)
    try:
        if args.command == "run":
            return command_run(args)
        if args.command == "report":
            for path in write_report(args.output_dir, args.baseline, Significance(args.test, args.correction)):
                print(f"wrote {path}")
            return 0
        if args.command == "verify":
            return command_verify(args)
        if args.command == "page":
            print(f"wrote {write_page(args.results_dir, args.spec)}")
            return 0
        if args.command == "tasks":
            return command_tasks(args)
        return plugin_command("train")(args.stage, args.config)
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the disk filled up while writing
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished results are kept", file=sys.stderr)
        return 130
