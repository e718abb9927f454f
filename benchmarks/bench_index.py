"""Approximate faiss indexes against exact search, and exact search over a memory-mapped corpus.

1. Real embeddings (a model's cached embeddings of a BEIR folder, SciFact by default): for flat, ivf and hnsw
   settings, build and search seconds, recall@10 / recall@100 of the exact top lists, and nDCG@10.
2. Scale: ``--rows`` random unit vectors (the corpus) written to a memory-mapped .npy file, searched exactly in
   blocks and with IVF: seconds, and peak Python-side memory (tracemalloc) against the file's size.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_index.py [--model searchr3:smollm2-sft]
           [--beir-dir ../shared/data/beir/scifact] [--rows 2000000] [--out results/benchmarks/index.json]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.cache import EmbeddingCache, cache_file
from searchr3_eval.data import document_text, load_beir_folder
from searchr3_eval.metrics import evaluate
from searchr3_eval.models import ModelOptions, load_model, parse_model_specs
from searchr3_eval.retrieval import dense_search, parse_index

REAL_INDEXES = ["flat", "ivf", "ivf:nprobe=64", "hnsw", "hnsw:ef_search=64"]


def recall(exact: dict, approx: dict, k: int) -> float:
    def top(docs: dict) -> set:
        return set(sorted(docs, key=lambda d: -docs[d])[:k])

    return float(np.mean([len(top(exact[q]) & top(approx.get(q, {}))) / len(top(exact[q])) for q in exact]))


def real_embeddings(args) -> list[dict]:
    task = load_beir_folder(args.beir_dir, "test")
    spec = parse_model_specs(args.model)[0]
    encoder = load_model(spec, ModelOptions(show_progress=False), EmbeddingCache(cache_file()))
    doc_ids, query_ids = list(task.corpus), list(task.queries)
    doc_emb = encoder.encode([document_text(task.corpus[d]) for d in doc_ids], "document")
    query_emb = encoder.encode([task.queries[q] for q in query_ids], "query")
    rows, exact = [], None
    for name in REAL_INDEXES:
        start = time.perf_counter()
        run = dense_search(query_ids, query_emb, doc_ids, doc_emb, top_k=100, index=name, show_progress=False)
        seconds = time.perf_counter() - start
        exact = exact or run
        rows.append({"index": parse_index(name).name, "build_and_search_seconds": round(seconds, 3),
                     "recall_at_10_vs_flat": round(recall(exact, run, 10), 4),
                     "recall_at_100_vs_flat": round(recall(exact, run, 100), 4),
                     "ndcg_at_10": round(evaluate(task.qrels, run).scores["ndcg_at_10"], 4)})
        print(rows[-1], flush=True)
    return rows


def memory_mapped_scale(rows: int, dim: int, queries: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        path = Path(tmp) / "corpus.npy"
        stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
        for start in range(0, rows, 100_000):
            block = rng.normal(size=(min(100_000, rows - start), dim)).astype(np.float32)
            stored[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        stored.flush()
        del stored
        corpus = np.load(path, mmap_mode="r")
        query_emb = np.asarray(corpus[rng.choice(rows, queries, replace=False)]) + 0.01
        ids = [str(i) for i in range(rows)]
        for name in ["flat", "ivf"]:
            tracemalloc.start()
            start = time.perf_counter()
            dense_search([str(i) for i in range(queries)], query_emb, ids, corpus, top_k=100, index=name,
                         show_progress=False)
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            out.append({"index": parse_index(name).name, "rows": rows, "dim": dim, "queries": queries,
                        "file_gib": round(path.stat().st_size / 2**30, 2), "seconds": round(seconds, 1),
                        "peak_python_allocations_gib": round(peak / 2**30, 3)})
            print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="searchr3:smollm2-sft")
    parser.add_argument("--beir-dir", type=Path, default=Path("../shared/data/beir/scifact"))
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", default="results/benchmarks/index.json")
    args = parser.parse_args()
    result = {
        "benchmark": "faiss indexes against exact search; exact search over a memory-mapped corpus",
        "command": "HF_HUB_OFFLINE=1 python benchmarks/bench_index.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "real": {"model": args.model, "task": str(args.beir_dir), "indexes": real_embeddings(args)},
        "memory_mapped": memory_mapped_scale(args.rows, args.dim, args.queries),
    }
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
