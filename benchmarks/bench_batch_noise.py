"""The noise floor of the RL environment's rank audit: how much a document's score moves when the same policy re-encodes
it in a different batch (bf16 autocast, the cached lower layers shared), against how densely the corpus' scores lie.

A rewarded rank is compared with a freshly encoded index whose batches group the documents differently; where many
documents score within this noise of the positive, the two disagree on its exact rank without any document being
stale. Documents are a random sample of the folder's corpus; queries its first train claims (direct embeddings).

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_batch_noise.py [--config trainer/configs/rl_reasoning_smollm2.yaml]
"""
from __future__ import annotations

import argparse
import platform
import random
from pathlib import Path

import numpy as np
import torch

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.data import document_text, load_beir_folder
from trainer.config import RLConfig, load_config
from trainer.modeling import Policy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=Path("trainer/configs/rl_reasoning_smollm2.yaml"))
    parser.add_argument("--documents", type=int, default=240)
    parser.add_argument("--groups", type=int, default=3, help="the second encode splits the documents into this many batches")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", default="results/benchmarks/batch_noise.json")
    args = parser.parse_args()
    cfg = load_config(args.config, RLConfig)
    policy = Policy.from_config(cfg)
    task = load_beir_folder(Path(cfg.beir_dir), cfg.beir_split)
    picked = random.Random(0).sample(list(task.corpus), args.documents)
    texts = [document_text(task.corpus[d]) for d in picked]
    together = policy.embed(texts, "document", cfg.max_document_length).numpy()
    apart = np.zeros_like(together)
    for g in range(args.groups):
        apart[g :: args.groups] = policy.embed(texts[g :: args.groups], "document", cfg.max_document_length).numpy()
    queries = policy.embed([task.queries[q] for q in list(task.qrels)[: args.queries]], "query").numpy()
    noise = np.abs(queries @ (together - apart).T)
    result = {
        "benchmark": "score change of the same documents re-encoded in other batches (same weights)",
        "command": f"HF_HUB_OFFLINE=1 python benchmarks/bench_batch_noise.py --config {args.config} --documents "
                   f"{args.documents} --groups {args.groups} --queries {args.queries}",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "model": cfg.model, "mixed_precision": cfg.mixed_precision, "documents": args.documents, "queries": args.queries,
        "document_cosine_min": round(float((together * apart).sum(1).min()), 6),
        "score_noise_mean": round(float(noise.mean()), 5),
        "score_noise_p99": round(float(np.quantile(noise, 0.99)), 5),
        "score_noise_max": round(float(noise.max()), 5),
        "score_std_per_query_mean": round(float((queries @ together.T).std(1).mean()), 4),
    }
    atomic_write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
