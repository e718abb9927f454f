"""The memory allocator's cost, side by side: SFT steps and document encoding under glibc returning freed memory
(what a command line used before tcmalloc), glibc's default, and tcmalloc (what a command line uses where installed).

Each setting and workload runs in its own process (an allocator is process-wide). SFT: the shipped config
(trainer/configs/sft_smollm2.yaml: LoRA on the top 8 layers, lower layers cached) on its first --sft-steps batches of
--batch-size triples from runs/data/train.jsonl (`searchr3-eval train data --config trainer/configs/data_smollm2.yaml`
writes it). Encoding: the packaged smollm2-sft on the first --docs SciFact documents, no cache. Reported: tokens/s,
user and kernel CPU seconds, minor page faults, peak resident memory, and the losses and first vector, which must not
depend on the allocator.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_allocator.py [--sft-steps 3] [--docs 160]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.memory import NO_TCMALLOC_ENV, return_freed_memory, tcmalloc_library

SETTINGS = ("glibc, freed memory returned", "glibc default", "tcmalloc")


def usage() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_seconds": r.ru_utime, "kernel_seconds": r.ru_stime, "minor_faults": r.ru_minflt,
            "peak_rss_mib": round(r.ru_maxrss / 1024)}


def sft_worker(args: argparse.Namespace) -> dict:
    import csv

    from trainer.config import SFTConfig, load_config
    from trainer.sft import train_sft

    cfg = load_config(Path("trainer/configs/sft_smollm2.yaml"), SFTConfig)
    with tempfile.TemporaryDirectory() as out:
        cfg = dataclasses.replace(cfg, output_dir=out, eval_file=None, save_every=0, max_steps=args.sft_steps,
                                  batch_size=args.batch_size)
        start = time.perf_counter()
        train_sft(cfg, show_progress=False)
        wall = time.perf_counter() - start
        rows = list(csv.DictReader(open(Path(out) / "loss_log.csv", encoding="utf-8")))
    return {"wall_seconds": round(wall, 1), "tokens_per_second": [round(float(r["tokens_per_second"]), 1) for r in rows],
            "losses": [float(r["total"]) for r in rows], **usage()}


def encode_worker(args: argparse.Namespace) -> dict:
    from searchr3_eval.data import document_text, load_beir_folder
    from searchr3_eval.models.searchr3 import SearchR3Encoder

    corpus = load_beir_folder(Path(args.beir_dir)).corpus
    texts = [document_text(doc) for _, doc in zip(range(args.docs), corpus.values())]
    encoder = SearchR3Encoder.from_pretrained("smollm2-sft", dtype=args.dtype, show_progress=False)
    start = time.perf_counter()
    vectors = encoder.encode(texts, "document")
    seconds = time.perf_counter() - start
    return {"docs_per_second": round(len(texts) / seconds, 3), "first_vector": [float(x) for x in vectors[0][:8]],
            **usage()}


def run_setting(setting: str, workload: str, argv: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", NO_TCMALLOC_ENV)}
    if setting == "tcmalloc":
        env["LD_PRELOAD"] = tcmalloc_library()
    else:
        env[NO_TCMALLOC_ENV] = "1"
    done = subprocess.run([sys.executable, __file__, *argv, "--worker", setting, workload], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{setting} / {workload} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sft-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--docs", type=int, default=160)
    parser.add_argument("--beir-dir", default="../shared/data/beir/scifact")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default="results/benchmarks/allocator.json")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        setting, workload = args.worker
        if setting == SETTINGS[0]:
            assert return_freed_memory()
        print(json.dumps(sft_worker(args) if workload == "sft" else encode_worker(args)))
        return
    if tcmalloc_library() is None:
        sys.exit("tcmalloc is not installed (Debian/Ubuntu: apt install libtcmalloc-minimal4)")
    argv = [f"--sft-steps={args.sft_steps}", f"--batch-size={args.batch_size}", f"--docs={args.docs}",
            f"--beir-dir={args.beir_dir}", f"--dtype={args.dtype}"]
    rows = {}
    for setting in SETTINGS:
        rows[setting] = {workload: run_setting(setting, workload, argv) for workload in ("sft", "encode")}
        print(setting, json.dumps(rows[setting]), flush=True)
    base = rows[SETTINGS[0]]
    for row in rows.values():
        row["sft"]["speedup"] = round(sum(row["sft"]["tokens_per_second"]) / sum(base["sft"]["tokens_per_second"]), 2)
        row["encode"]["speedup"] = round(row["encode"]["docs_per_second"] / base["encode"]["docs_per_second"], 2)
    same = all(r["sft"]["losses"] == base["sft"]["losses"] and r["encode"]["first_vector"] == base["encode"][
        "first_vector"] for r in rows.values())
    atomic_write_json(args.out, {"benchmark": "memory allocator: SFT steps and document encoding",
                                 "sft": f"sft_smollm2.yaml, {args.sft_steps} steps of {args.batch_size} triples",
                                 "encode": f"smollm2-sft, {args.docs} SciFact documents, dtype {args.dtype}",
                                 "cpu_threads": os.cpu_count(), "same_losses_and_vectors": same, "settings": rows})
    print(f"wrote {args.out}; same losses and vectors: {same}")


if __name__ == "__main__":
    main()
