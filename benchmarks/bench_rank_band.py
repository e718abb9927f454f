"""How many stale documents the RL environment must re-encode before a reward so that the positive's rank is the one
a freshly encoded index gives: a simulation on two real checkpoints' document embeddings.

The ``--old`` checkpoint's embeddings stand for what the index holds and the ``--new`` one's for a fresh encode; a
document last re-encoded ``s`` of the ``--steps-between`` training steps ago is placed ``s/steps`` of the way back
from new to old (a linear model of the drift). Each document's age is uniform over ``--refresh-every`` steps (the
round-robin refresh), the positive is fresh (re-encoded first). For each rank band the documents scoring within it
of the positive are made fresh too, and the positive's rank among all documents is compared with the fresh index's,
for the direct embeddings (new checkpoint) of train queries. A measured band (``--drift-bands``, the environment's
``drift_band``) is, per query, that many times the largest score change over the oldest documents (the round-robin
slice the environment re-encodes first), which are then fresh too. Embeddings come from the evaluation's cache when the
checkpoints were evaluated on the folder (else they are encoded: about 45 minutes each for SciFact on this CPU).

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_rank_band.py --old searchr3:smollm2-sft \
           --new searchr3:runs/rl-smollm2/final --steps-between 20 [--beir-dir ../shared/data/beir/scifact]
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.cache import EmbeddingCache, cache_file
from searchr3_eval.data import document_text, load_beir_folder
from searchr3_eval.models import ModelOptions, load_model, parse_model_specs
from trainer.environment import positive_ranks


def encoder(spec: str, cache: EmbeddingCache):
    return load_model(parse_model_specs(spec)[0], ModelOptions(show_progress=False), cache)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", required=True, help="the checkpoint the stale index was encoded with")
    parser.add_argument("--new", required=True, help="the checkpoint after --steps-between training steps")
    parser.add_argument("--steps-between", type=int, required=True)
    parser.add_argument("--beir-dir", type=Path, default=Path("../shared/data/beir/scifact"))
    parser.add_argument("--queries", type=int, default=200, help="train queries (split 'train') compared")
    parser.add_argument("--refresh-every", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--bands", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02])
    parser.add_argument("--drift-bands", type=float, nargs="*", default=[1.0, 1.5, 2.0])
    parser.add_argument("--out", default="results/benchmarks/rank_band.json")
    args = parser.parse_args()
    task = load_beir_folder(args.beir_dir, "train")
    doc_ids = list(task.corpus)
    texts = [document_text(task.corpus[d]) for d in doc_ids]
    pairs = [(task.queries[q], d) for q, judged in task.qrels.items() for d, grade in judged.items()
             if grade > 0 and d in task.corpus]
    picked = np.random.default_rng(0).choice(len(pairs), min(args.queries, len(pairs)), replace=False)
    position = {d: i for i, d in enumerate(doc_ids)}
    positives = np.array([position[pairs[i][1]] for i in picked])
    cache = EmbeddingCache(cache_file())
    old = encoder(args.old, cache).encode(texts, "document")
    new_encoder = encoder(args.new, cache)
    new = new_encoder.encode(texts, "document")
    queries = new_encoder.encode([pairs[i][0] for i in picked], "query")
    fresh_scores = queries @ new.T
    fresh = positive_ranks(fresh_scores, positives)
    rows = []
    for every in args.refresh_every:
        age = np.random.default_rng(1).integers(0, every, len(doc_ids)) / args.steps_between
        held = new + age[:, None] * (old - new)
        held /= np.linalg.norm(held, axis=1, keepdims=True)
        held[positives] = new[positives]
        scores = queries @ held.T
        oldest = age == age.max()
        drift = np.abs(fresh_scores - scores)[:, oldest].max(axis=1)
        gap = np.abs(scores - scores[np.arange(len(positives)), positives][:, None])
        settings = [({"rank_band": band}, np.full(len(positives), band), False) for band in args.bands]
        settings += [({"drift_band": factor}, factor * drift, True) for factor in args.drift_bands]
        for setting, band, slice_fresh in settings:
            in_band = (gap <= band[:, None]) & (band[:, None] > 0)
            refreshed = np.where(in_band | (oldest[None, :] & slice_fresh), fresh_scores, scores)
            ranks = positive_ranks(refreshed, positives)
            rows.append({"refresh_every": every, **setting,
                         "band_documents_per_query_mean": round(float(in_band.sum(1).mean()), 1),
                         "positive_rank_agreement (same rank)": round(float(np.mean(ranks == fresh)), 3),
                         "reward_agreement (1 - mean |1/r - 1/r_fresh|)":
                             round(float(1 - np.mean(np.abs(1 / ranks - 1 / fresh))), 4)})
            print(rows[-1], flush=True)
    atomic_write_json(args.out, {
        "benchmark": "rank-band refresh, simulated between two checkpoints' cached document embeddings",
        "command": "HF_HUB_OFFLINE=1 python benchmarks/bench_rank_band.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "documents": len(doc_ids), "queries_compared": len(picked),
        "document_cosine_old_vs_new_mean": round(float(np.mean(np.sum(old * new, axis=1))), 4),
        "fresh_mrr": round(float(np.mean(1 / fresh)), 3), "rows": rows,
    })


if __name__ == "__main__":
    main()
