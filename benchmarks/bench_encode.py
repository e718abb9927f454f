"""Encode throughput (docs/s) of the MiniLM baseline vs sentence-transformers' own encode() on the same texts.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_encode.py [--docs 1319] [--out results/benchmarks/encode.json]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.data import DEFAULT_TASK, document_text, load_task
from searchr3_eval.models.sentence_transformer import SentenceTransformerEncoder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=1319)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="results/benchmarks/encode.json")
    args = parser.parse_args()
    task = load_task(DEFAULT_TASK)
    texts = [document_text(d) for d in list(task.corpus.values())[: args.docs]]
    ours = SentenceTransformerEncoder("minilm", batch_size=args.batch_size, show_progress=False)  # no cache
    ours.encode(texts[:64], "document")  # warm-up
    rows = {}
    for name, fn in {
        "searchr3_eval SentenceTransformerEncoder.encode": lambda: ours.encode(texts, "document"),
        "sentence-transformers SentenceTransformer.encode": lambda: ours.model.encode(
            texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False),
    }.items():
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        rows[name] = {"seconds": round(seconds, 3), "docs_per_second": round(len(texts) / seconds, 1)}
        print(f"{name}: {len(texts) / seconds:.1f} docs/s")
    atomic_write_json(args.out, {
        "benchmark": "encode throughput, all-MiniLM-L6-v2, GSM8KRetrieval corpus", "docs": len(texts),
        "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "results": rows,
    })


if __name__ == "__main__":
    main()
