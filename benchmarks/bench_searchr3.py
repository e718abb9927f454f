"""Search-R3 embeddings per second on CPU, direct vs reasoning mode, and the share of time spent generating.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_searchr3.py [--model smollm2] [--texts 32] [--max-new-tokens 32]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.data import DEFAULT_TASK, load_task
from searchr3_eval.models.searchr3 import SearchR3Encoder


class TimedGenerator:
    """Wraps the encoder's generator to add up the seconds spent generating."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __call__(self, prompts, max_new_tokens):
        start = time.perf_counter()
        try:
            return self.inner(prompts, max_new_tokens)
        finally:
            self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default="results/benchmarks/searchr3.json")
    args = parser.parse_args()
    queries = list(load_task(DEFAULT_TASK).queries.values())[: args.texts]
    enc = SearchR3Encoder.from_pretrained(args.model, add_token=True, batch_size=args.batch_size,
                                          max_new_tokens=args.max_new_tokens, show_progress=False)
    enc.generator = timed = TimedGenerator(enc.generator)
    enc.encode(queries[:2], "query")  # warm-up
    results = {}
    for mode in ("off", "on"):
        enc.config, timed.seconds = replace(enc.config, reasoning=mode), 0.0
        start = time.perf_counter()
        enc.encode(queries, "query")
        seconds = time.perf_counter() - start
        results["direct" if mode == "off" else "reasoning"] = {
            "seconds": round(seconds, 2), "embeddings_per_second": round(len(queries) / seconds, 2),
            "generation_seconds": round(timed.seconds, 2), "generation_share": round(timed.seconds / seconds, 3),
        }
        print(mode, results)
    atomic_write_json(args.out, {"benchmark": "Search-R3 query embeddings on CPU", "model": enc.name,
                                 "texts": len(queries), "batch_size": args.batch_size,
                                 "max_new_tokens": args.max_new_tokens, "results": results})


if __name__ == "__main__":
    main()
