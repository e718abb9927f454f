import math

import numpy as np
import pytest

from searchr3_eval.data import DEFAULT_TASK, document_text, load_task
from searchr3_eval.metrics import drop_identical_ids, evaluate
from searchr3_eval.models.bm25 import BM25Retriever, bm25_index, bm25_scores, tokenize


def test_metrics_match_hand_computation():
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}}
    run = {"q1": {"x": 0.9, "a": 0.8, "b": 0.1}, "q2": {"y": 0.5, "z": 0.4}}
    scores = evaluate(qrels, run).scores
    # trec_eval (so BEIR and pytrec_eval) uses the relevance grade itself as the gain
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert scores["ndcg_at_10"] == pytest.approx((dcg / idcg + 0.0) / 2)
    assert scores["mrr_at_10"] == pytest.approx((1 / 2 + 0) / 2)
    assert scores["recall_at_100"] == pytest.approx((1 + 0) / 2)
    assert scores["map_at_100"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 0) / 2)


def test_mrr_at_10_ignores_hits_below_rank_10():
    run = {"q": {f"d{i}": 100.0 - i for i in range(12)}}
    assert evaluate({"q": {"d11": 1}}, run).scores["mrr_at_10"] == 0.0
    assert evaluate({"q": {"d9": 1}}, run).scores["mrr_at_10"] == pytest.approx(0.1)


def test_identical_ids_are_dropped_like_beir():
    assert drop_identical_ids({"q1": {"q1": 1.0, "d": 0.5}}) == {"q1": {"d": 0.5}}


def independent_bm25_scores(task, k1=1.5, b=0.75) -> np.ndarray:
    """[Q, N] Lucene BM25 scores of the task's queries against its documents (in the task's order), written out with
    numpy, sharing only the tokenizer."""
    docs = tokenize([document_text(task.corpus[d]) for d in task.corpus])
    vocab = {t: i for i, t in enumerate(sorted({t for d in docs for t in d}))}
    tf = np.zeros((len(docs), len(vocab)))
    for row, tokens in enumerate(docs):
        for t in tokens:
            tf[row, vocab[t]] += 1
    lengths = tf.sum(1)
    df = (tf > 0).sum(0)
    idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
    weights = idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths / lengths.mean())[:, None])
    return np.stack([weights[:, [vocab[t] for t in tokens if t in vocab]].sum(1)
                     for tokens in tokenize(list(task.queries.values()))])


def independent_bm25_ndcg10(task) -> float:
    """Binary nDCG@10 of ``independent_bm25_scores``' rankings."""
    doc_ids = list(task.corpus)
    total = 0.0
    query_ids = list(task.queries)
    for qid, scores in zip(query_ids, independent_bm25_scores(task)):
        ranking = [doc_ids[i] for i in np.argsort(-scores, kind="stable")[:10] if scores[i] > 0]
        relevant = task.qrels[qid]
        dcg = sum(1 / math.log2(r + 2) for r, d in enumerate(ranking) if relevant.get(d, 0) > 0)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(10, len(relevant))))
        total += dcg / idcg
    return total / len(query_ids)


def test_bm25_ndcg_agrees_with_independent_computation():
    task = load_task(DEFAULT_TASK)
    ours = evaluate(task.qrels, BM25Retriever(show_progress=False).search(task, top_k=100)).scores["ndcg_at_10"]
    assert 0.5 < ours < 1.0
    assert ours == pytest.approx(independent_bm25_ndcg10(task), abs=2e-3)


def test_bm25_scores_every_document_as_the_independent_computation_does():
    """``bm25_scores`` (a hybrid teacher's lexical half) gives every query-document pair its Lucene score."""
    task = load_task(DEFAULT_TASK)
    index = bm25_index([document_text(d) for d in task.corpus.values()])
    ours = bm25_scores(index, list(task.queries.values()))
    assert ours.shape == (len(task.queries), len(task.corpus)) and (ours > 0).mean() > 0.1
    # Lucene (and bm25s' "lucene" method) leaves out the textbook constant factor k1 + 1 = 2.5
    np.testing.assert_allclose(2.5 * ours, independent_bm25_scores(task), rtol=1e-4, atol=1e-4)
    assert not bm25_scores(index, ["", "the of and"]).any()  # no indexed word: 0 against every document
