"""Search-R3 encoder speed on this machine, each optimisation alone and all together, against the machine's limit.

One run, the same texts for every variant: today's float32 path (fixed-count batches, no shared prefix, sdpa), then
bfloat16, token-budget batching, the shared prompt prefix, eager attention and dynamic int8 each alone, then all
the kept ones together. It also measures the bf16 and float32 matmul peak (so tokens/s is shown as a share of the
limit), the embeddings' cosine to the float32 path, nDCG@10 on the texts' own mini task, and llama.cpp's
last-token embeddings on the same GGUF when llama-cpp-python is installed (a peer, not a dependency).

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_encoders.py [--texts 256] [--out results/benchmarks/encoders.json]
"""
from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass

import torch

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.data import DEFAULT_TASK, RetrievalTask, document_text, load_task
from searchr3_eval.metrics import evaluate
from searchr3_eval.models.lm.device import cpu_has_native_bf16
from searchr3_eval.models.lm.locate import SMOLLM2_GGUF, resolve_llm
from searchr3_eval.models.searchr3 import SearchR3Encoder
from searchr3_eval.retrieval import dense_search


@dataclass
class Variant:
    name: str
    dtype: str = "float32"
    batch_tokens: int = 1 << 30  # effectively off: batches of ``batch_size`` texts
    share_prefix: bool = False
    attention: str = "sdpa"
    int8: bool = False


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 20) -> float:
    """GFLOP/s of an n x n matmul."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def mini_task(texts_count: int) -> RetrievalTask:
    """The first documents of GSM8KRetrieval with the queries that judge them."""
    task = load_task(DEFAULT_TASK)
    doc_ids = list(task.corpus)[:texts_count]
    keep = set(doc_ids)
    qrels = {q: docs for q, docs in task.qrels.items() if set(docs) & keep}
    return RetrievalTask("mini", "test", {d: task.corpus[d] for d in doc_ids}, {q: task.queries[q] for q in qrels},
                         qrels, "benchmark")


def run_variant(variant: Variant, task: RetrievalTask, batch_size: int) -> dict:
    enc = SearchR3Encoder.from_pretrained("smollm2", dtype=variant.dtype, add_token=True, batch_size=batch_size,
                                          show_progress=False, attn_implementation=variant.attention)
    enc.batch_tokens, enc.share_prefix = variant.batch_tokens, variant.share_prefix
    if variant.int8:
        enc.model = torch.ao.quantization.quantize_dynamic(enc.model, {torch.nn.Linear}, dtype=torch.qint8)
    docs = [document_text(task.corpus[d]) for d in task.corpus]
    enc.encode(docs[:8], "document")  # warm-up
    doc_emb = enc.encode(docs, "document")
    stats = enc.last_stats
    query_emb = enc.encode(list(task.queries.values()), "query")
    run = dense_search(list(task.queries), query_emb, list(task.corpus), doc_emb, top_k=10, show_progress=False)
    return {
        "documents_per_second": len(docs) / stats.seconds,
        "tokens_per_second": stats.tokens / stats.seconds,
        "padding_waste": stats.padding_waste,
        "ndcg_at_10": evaluate(task.qrels, run).scores["ndcg_at_10"],
        "embeddings": doc_emb,
    }


def llama_cpp_peer(texts: list[str]) -> dict | None:
    """llama.cpp's own last-token embeddings of the same GGUF (prompt processing only), if installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    folder, gguf, _ = resolve_llm("smollm2")
    llm = Llama(model_path=f"{folder}/{gguf}", embedding=True, pooling_type=3, n_ctx=1024, n_batch=1024,
                n_threads=torch.get_num_threads(), verbose=False)  # pooling 3 = last token
    tokens = sum(len(llm.tokenize(t.encode())) for t in texts)
    start = time.perf_counter()
    for text in texts:
        llm.embed(text)
    seconds = time.perf_counter() - start
    return {"documents_per_second": len(texts) / seconds, "tokens_per_second": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=256, help="documents of GSM8KRetrieval to embed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="results/benchmarks/encoders.json")
    args = parser.parse_args()
    task = mini_task(args.texts)
    peaks = {"bfloat16_gflops": matmul_peak(torch.bfloat16), "float32_gflops": matmul_peak(torch.float32)}
    variants = [
        Variant("float32 (today's path)"),
        Variant("bfloat16 alone", dtype="bfloat16"),
        Variant("token-budget batches alone", batch_tokens=4096),
        Variant("shared prefix alone", share_prefix=True),
        Variant("eager attention alone", attention="eager"),
        Variant("dynamic int8 alone", int8=True),
        Variant("bf16 + budget + prefix (sdpa)", dtype="bfloat16", batch_tokens=4096, share_prefix=True),
        Variant("bf16 + budget + prefix + eager", dtype="bfloat16", batch_tokens=4096, share_prefix=True,
                attention="eager"),
    ]
    base_model = SearchR3Encoder.from_pretrained("smollm2", add_token=True, show_progress=False).model
    flops_per_token = 2 * sum(p.numel() for n, p in base_model.named_parameters() if "embed_tokens" not in n)
    del base_model
    rows, reference = {}, None
    for variant in variants:
        measured = run_variant(variant, task, args.batch_size)
        embeddings = measured.pop("embeddings")
        reference = embeddings if reference is None else reference
        measured["min_cosine_to_float32"] = float((embeddings * reference).sum(axis=1).min())
        peak = peaks["bfloat16_gflops" if variant.dtype == "bfloat16" else "float32_gflops"]
        measured["share_of_matmul_peak"] = measured["tokens_per_second"] * flops_per_token / (peak * 1e9)
        rows[variant.name] = {k: round(v, 4) for k, v in measured.items()}
        print(f"{variant.name:45s} " + "  ".join(f"{k}={v}" for k, v in rows[variant.name].items()), flush=True)
    base = rows["float32 (today's path)"]["documents_per_second"]
    for row in rows.values():
        row["speedup_vs_float32"] = round(row["documents_per_second"] / base, 2)
    peer = llama_cpp_peer([document_text(task.corpus[d]) for d in task.corpus])
    atomic_write_json(args.out, {
        "benchmark": "Search-R3 (SmolLM2-135M-Instruct GGUF, dequantized) document embeddings, direct mode",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"native bf16: {cpu_has_native_bf16()}",
        "texts": len(task.corpus), "queries": len(task.queries), "batch_size": args.batch_size,
        "model_file": SMOLLM2_GGUF, "flops_per_token": flops_per_token, "matmul_peak": peaks,
        "limit_tokens_per_second": {k: round(v * 1e9 / flops_per_token) for k, v in peaks.items()},
        "variants": rows, "llama_cpp": peer or "llama-cpp-python not installed",
    })
    print(f"peaks {peaks}; llama.cpp {peer}")


if __name__ == "__main__":
    main()
