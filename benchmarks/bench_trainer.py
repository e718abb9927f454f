"""RL environment step time, partial-refresh vs full re-encode cost and ranking agreement, training tokens/s.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_trainer.py [--model smollm2] [--docs 200] [--steps 3]
Documents and queries come from the embedded GSM8KRetrieval task.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.data import DEFAULT_TASK, document_text, load_task
from trainer.config import RLConfig, SFTConfig
from trainer.data import Triple, write_triples
from trainer.environment import RetrievalEnvironment, overlap_at_k
from trainer.rl import GRPOTrainer
from trainer.sft import train_sft


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="results/benchmarks/trainer.json")
    args = parser.parse_args()
    task = load_task(DEFAULT_TASK)
    ids = list(task.queries)[: args.docs]
    triples = [Triple(task.queries[q], document_text(task.corpus["d" + q[1:]]), []) for q in ids]
    work = Path(tempfile.mkdtemp())
    write_triples(work / "triples.jsonl", triples)

    sft = SFTConfig(model=args.model, output_dir=str(work / "sft"), train_file=str(work / "triples.jsonl"),
                    batch_size=4, max_steps=args.steps, save_every=0, learning_rate=1e-5)
    train_sft(sft, show_progress=False)
    sft_rows = (work / "sft" / "loss_log.csv").read_text().splitlines()[1:]
    sft_tokens_per_second = float(np.mean([float(r.split(",")[-1]) for r in sft_rows]))

    rl = RLConfig(model=args.model, output_dir=str(work / "rl"), train_file=str(work / "triples.jsonl"),
                  group_size=4, max_new_tokens=16, batch_size=2, steps=args.steps, top_k=10, refresh_every=10)
    start = time.perf_counter()
    trainer = GRPOTrainer(rl, triples)
    first_full = time.perf_counter() - start
    steps = [trainer.step(triples[2 * s : 2 * s + 2], trainer.positive_ids[2 * s : 2 * s + 2]) for s in range(args.steps)]
    queries = trainer.policy.encode([t.query for t in triples[:50]], "query").numpy()
    partial_rankings = trainer.env.rankings(queries, 10)
    fresh = RetrievalEnvironment(trainer.env.doc_ids, trainer.env.doc_texts,
                                 lambda texts: trainer.policy.encode(texts, "document"))
    full = fresh.full_refresh()
    result = {
        "benchmark": "RL environment and training throughput on CPU", "model": args.model, "documents": len(triples),
        "initial_index_seconds": round(first_full, 2),
        "rl_step_seconds_mean": round(float(np.mean([s["rollout_seconds"] + s["refresh_seconds"] for s in steps])), 2),
        "rl_tokens_per_second_mean": round(float(np.mean([s["tokens_per_second"] for s in steps])), 1),
        "partial_refresh_docs_mean": float(np.mean([s["refreshed_docs"] for s in steps])),
        "partial_refresh_seconds_mean": round(float(np.mean([s["refresh_seconds"] for s in steps])), 2),
        "full_refresh_docs": full.documents, "full_refresh_seconds": round(full.seconds, 2),
        "refresh_cost_ratio": round(float(np.mean([s["refresh_seconds"] for s in steps])) / full.seconds, 3),
        "top10_overlap_partial_vs_fresh": round(overlap_at_k(partial_rankings, fresh.rankings(queries, 10)), 3),
        "sft_tokens_per_second_mean": round(sft_tokens_per_second, 1),
    }
    print(result)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
