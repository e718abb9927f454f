"""Score (model, task) pairs and write one result JSON per pair; finished pairs are skipped."""
from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path

from searchr3_eval import __version__
from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.data import RetrievalTask, document_text
from searchr3_eval.metrics import Run, drop_identical_ids, evaluate
from searchr3_eval.models import BM25Retriever, DenseEncoder
from searchr3_eval.retrieval import dense_search


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def result_path(output_dir: Path, model_spec: str, task_name: str) -> Path:
    return output_dir / "runs" / slug(model_spec) / f"{slug(task_name)}.json"


def retrieve(model: BM25Retriever | DenseEncoder, task: RetrievalTask, top_k: int) -> tuple[Run, dict]:
    """Run retrieval; returns the run and timing/throughput facts for the result file."""
    if isinstance(model, BM25Retriever):
        start = time.perf_counter()
        run = model.search(task, top_k)
        return run, {"retrieval_seconds": time.perf_counter() - start}
    doc_ids, query_ids = list(task.corpus), list(task.queries)
    doc_emb = model.encode([document_text(task.corpus[d]) for d in doc_ids], "document")
    docs = model.last_stats
    query_emb = model.encode([task.queries[q] for q in query_ids], "query")
    queries = model.last_stats
    start = time.perf_counter()
    run = dense_search(query_ids, query_emb, doc_ids, doc_emb, top_k=top_k, show_progress=model.show_progress)
    return run, {
        "encode_seconds_corpus": docs.seconds,
        "encode_seconds_queries": queries.seconds,
        "docs_encoded": docs.encoded,
        "docs_from_cache": docs.cached,
        "queries_encoded": queries.encoded,
        "queries_from_cache": queries.cached,
        "docs_per_second": docs.encoded / docs.seconds if docs.encoded else None,
        "queries_per_second": queries.encoded / queries.seconds if queries.encoded else None,
        "search_seconds": time.perf_counter() - start,
        "embedding_dim": int(doc_emb.shape[1]),
    }


def evaluate_pair(model: BM25Retriever | DenseEncoder, model_spec: str, task: RetrievalTask, top_k: int = 100) -> dict:
    start = time.perf_counter()
    run, timing = retrieve(model, task, top_k)
    scores = evaluate(task.qrels, drop_identical_ids(run))
    return {
        "model": model.name,
        "model_spec": model_spec,
        "revision": model.revision,
        "settings": getattr(model, "settings", {}),
        "task": task.name,
        "split": task.split,
        "source": task.source,
        "num_documents": len(task.corpus),
        "num_queries": len(task.queries),
        "top_k": top_k,
        "scores": scores,
        "wall_seconds": time.perf_counter() - start,
        **timing,
        "searchr3_eval_version": __version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(output_dir: Path, result: dict) -> Path:
    return atomic_write_json(result_path(output_dir, result["model_spec"], result["task"]), result)
