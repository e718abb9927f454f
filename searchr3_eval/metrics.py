"""Retrieval metrics with pytrec_eval, named as in MTEB and computed as in BEIR."""
from __future__ import annotations

from dataclasses import dataclass

import pytrec_eval

Run = dict[str, dict[str, float]]

# our name -> (pytrec_eval measure, result key, run cut-off or None)
MEASURES: dict[str, tuple[str, str, int | None]] = {
    "ndcg_at_10": ("ndcg_cut.10", "ndcg_cut_10", None),
    "recall_at_100": ("recall.100", "recall_100", None),
    "map_at_100": ("map_cut.100", "map_cut_100", None),
    "mrr_at_10": ("recip_rank", "recip_rank", 10),
}
MAIN_METRIC = "ndcg_at_10"


@dataclass
class Evaluation:
    """Mean scores over the judged queries and each query's own scores (``per_query[metric][qid]``)."""

    scores: dict[str, float]
    per_query: dict[str, dict[str, float]]


def top_k(run: Run, k: int) -> Run:
    """Keep the ``k`` best-scored documents of each query."""
    return {qid: dict(sorted(docs.items(), key=lambda kv: kv[1], reverse=True)[:k]) for qid, docs in run.items()}


def drop_identical_ids(run: Run) -> Run:
    """BEIR's ``ignore_identical_ids``: a document with the query's own id is not a result (ArguAna, Quora)."""
    return {qid: {d: s for d, s in docs.items() if d != qid} for qid, docs in run.items()}


def evaluate(qrels: dict[str, dict[str, int]], run: Run) -> Evaluation:
    """Scores of every judged query, and their means, as BEIR's EvaluateRetrieval.evaluate computes them.

    A judged query the run does not answer scores 0 (pytrec_eval would leave it out of the mean)."""
    scores: dict[str, float] = {}
    per_query: dict[str, dict[str, float]] = {}
    answered = {qid: docs for qid, docs in run.items() if qid in qrels}
    for name, (measure, key, cut) in MEASURES.items():
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {measure})
        found = evaluator.evaluate(top_k(answered, cut) if cut else answered)
        per_query[name] = {qid: found[qid][key] if qid in found else 0.0 for qid in qrels}
        scores[name] = sum(per_query[name].values()) / len(qrels) if qrels else 0.0
    return Evaluation(scores, per_query)
