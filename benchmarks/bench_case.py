"""Letter-case robustness: a task as given, with its queries upper-cased, and with its documents upper-cased.

Old collections (CISI, Cranfield) and real users write in capitals; a model that reads case loses what an uncased one
(BM25, MiniLM) keeps. The goal is each variant within 0.02 nDCG@10 of the as-given score. The variants are written as
BEIR folders (``<task>-upper-queries``, ``<task>-upper-documents``) into a temporary --data-dir and scored by the
runner like any task, so their results land under ``--output-dir`` with their own identities.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_case.py --data-dir ../shared/data/beir --task cisi \
           --models bm25,minilm,searchr3:smollm2-sft [--output-dir results/case-robustness]

A Search-R3 model that folds letter case (its manifest declares it, or the spec asks: ``searchr3:<name>[case_fold=all-caps]``)
is its own row, ``<spec>[case_fold=all-caps]``.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.cache import default_cache_dir
from searchr3_eval.models.lm.device import cpu_has_native_bf16
from searchr3_eval.results import TaskResult
from searchr3_eval.runner import evaluate

GOAL = 0.02


def upper_cased_copy(source: Path, target: Path, field: str) -> None:
    """``source``'s BEIR files with the ``field`` file ("queries" or "corpus") upper-cased (ids kept)."""
    shutil.copytree(source / "qrels", target / "qrels")
    for name in ("corpus", "queries"):
        lines = (source / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        if name == field:
            rows = [json.loads(line) for line in lines if line.strip()]
            lines = [json.dumps({k: v.upper() if k in ("title", "text") and isinstance(v, str) else v
                                 for k, v in row.items()}) for row in rows]
        (target / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def row_name(result: TaskResult) -> str:
    """The model's spec, with the case folding it ran with where it folds (one model is a row with and without)."""
    fold = result.settings.get("case_fold")
    return f"{result.model_spec}[case_fold={fold}]" if fold else result.model_spec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--task", default="cisi", help="a folder under --data-dir")
    parser.add_argument("--models", default="bm25,minilm,searchr3:smollm2-sft")
    parser.add_argument("--output-dir", type=Path, default=Path("results/case-robustness"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        variants = {"as given": args.task, "queries upper-cased": f"{args.task}-upper-queries",
                    "documents upper-cased": f"{args.task}-upper-documents"}
        shutil.copytree(args.data_dir / args.task, data / args.task)
        upper_cased_copy(args.data_dir / args.task, data / variants["queries upper-cased"], "queries")
        upper_cased_copy(args.data_dir / args.task, data / variants["documents upper-cased"], "corpus")
        summary = evaluate(args.models, list(variants.values()), args.output_dir, data_dir=data,
                           cache_dir=default_cache_dir(), download=False)
    scores = {(row_name(r), r.task): r.scores["ndcg_at_10"] for r in summary.computed + summary.reused}
    rows = {}
    for spec in dict.fromkeys(spec for spec, _ in scores):
        given = scores[(spec, args.task)]
        rows[spec] = {label: {"ndcg_at_10": scores[(spec, task)], "minus_as_given": scores[(spec, task)] - given}
                      for label, task in variants.items()}
        rows[spec]["within_goal"] = all(abs(v["minus_as_given"]) <= GOAL for v in rows[spec].values())
    machine = f"{platform.processor() or platform.machine()}, native bf16: {cpu_has_native_bf16()}"
    path = args.output_dir / f"case_{args.task}.json"
    earlier = json.loads(path.read_text(encoding="utf-8"))["models"] if path.exists() else {}  # models measured before
    out = {"task": args.task, "goal": f"every variant within {GOAL} nDCG@10 of the as-given score",
           "models": {**earlier, **{spec: {**row, "machine": machine} for spec, row in rows.items()}}}
    atomic_write_json(path, out)
    for spec, row in rows.items():
        cells = ", ".join(f"{label} {v['ndcg_at_10']:.4f}" for label, v in row.items() if label != "within_goal")
        print(f"{spec}: {cells}; within {GOAL}: {row['within_goal']}")


if __name__ == "__main__":
    main()
