"""The real clients (mteb, beir; test extras, no mocks) run our encoders and agree with our own scores."""
from typing import Any

import numpy as np
import pytest

from searchr3_eval.data import DEFAULT_TASK, document_text, load_beir_folder, load_task
from searchr3_eval.metrics import drop_identical_ids, evaluate
from searchr3_eval.models.base import DenseEncoder
from searchr3_eval.models.mteb_wrapper import MTEBEncoder
from searchr3_eval.models.searchr3 import SearchR3Encoder


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model_dir):
    return SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False, batch_size=16,
                                           max_length=256)


def mteb_task(task):
    """An mteb retrieval task built from one of our BEIR-format tasks (mteb's own custom-task pattern)."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="SearchR3LocalRetrieval", description="A local BEIR-format task.", reference=None, type="Retrieval",
            category="t2t", modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"], main_score="ndcg_at_10",
            dataset={"path": "local/none", "revision": task.fingerprint or "local"}, date=("2021-01-01", "2021-12-31"),
            domains=["Academic"], task_subtypes=[], license="mit", annotations_creators="derived", dialect=[],
            sample_creation="found", bibtex_citation="",
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            corpus = Dataset.from_list([{"id": d, "title": doc["title"], "text": doc["text"]} for d, doc in task.corpus.items()])
            queries = Dataset.from_list([{"id": q, "text": text} for q, text in task.queries.items()])
            split = RetrievalSplitData(corpus=corpus, queries=queries, relevant_docs=task.qrels, top_ranked=None)
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return LocalRetrieval()


def test_mteb_evaluate_matches_our_ndcg(tiny_encoder, data_dir, tmp_path):
    mteb = pytest.importorskip("mteb")
    task = load_task("MiniGSM", data_dir)
    ours = evaluate(task.qrels, drop_identical_ids(tiny_encoder.search(task, 100))).scores["ndcg_at_10"]
    model = MTEBEncoder(tiny_encoder)
    result = mteb.evaluate(model, mteb_task(task), cache=mteb.ResultCache(tmp_path / "mteb-cache"),
                           encode_kwargs={"batch_size": 7}, show_progress_bar=False)
    (task_result,) = result.task_results
    # mteb rounds its retrieval metrics to 5 decimals; ours rounded the same way must be the same number
    assert task_result.get_score() == pytest.approx(round(ours, 5), abs=1e-9)
    assert model.mteb_model_meta.name.startswith("searchr3-eval/Search-R3")


def test_mteb_meta_changes_with_settings(tiny_model_dir):
    pytest.importorskip("mteb")
    a = MTEBEncoder(SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False))
    b = MTEBEncoder(SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False, reasoning="on"))
    assert a.mteb_model_meta.name == b.mteb_model_meta.name
    assert a.mteb_model_meta.revision != b.mteb_model_meta.revision


def test_mteb_encode_honours_batch_size_and_progress(tiny_encoder):
    model = MTEBEncoder(tiny_encoder)
    texts = [f"text number {i}" for i in range(9)]
    calls = []
    embed = tiny_encoder.embed
    tiny_encoder.embed = lambda batch, kind: calls.append(len(batch)) or embed(batch, kind)
    try:
        model.encode([{"text": texts}], prompt_type="document", batch_size=4, show_progress_bar=True)
    finally:
        del tiny_encoder.embed
    assert calls == [4, 4, 1] and tiny_encoder.show_progress is False


def test_beir_exact_search_and_evaluation_agree(tiny_encoder, data_dir):
    pytest.importorskip("beir")
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    task = load_beir_folder(data_dir / "MiniGSM")
    retriever = EvaluateRetrieval(DenseRetrievalExactSearch(tiny_encoder, batch_size=16), score_function="cos_sim", k_values=[10])
    run = retriever.retrieve(task.corpus, task.queries)
    ndcg, *_ = retriever.evaluate(task.qrels, run, [10])
    ours = evaluate(task.qrels, drop_identical_ids(tiny_encoder.search(task, 100))).scores["ndcg_at_10"]
    assert ndcg["NDCG@10"] == pytest.approx(ours, abs=1e-5)


def test_encode_corpus_accepts_beir_forms(tiny_encoder):
    task = load_task(DEFAULT_TASK)
    docs = [task.corpus[d] for d in list(task.corpus)[:3]]
    titled = [{"title": "A title", "text": docs[0]["text"]}, {"text": docs[1]["text"]}, {"title": None, "text": docs[2]["text"]}]
    expected = tiny_encoder.encode(["A title " + docs[0]["text"], docs[1]["text"], docs[2]["text"]], "document")
    as_rows = tiny_encoder.encode_corpus(titled)
    as_columns = tiny_encoder.encode_corpus({"title": ["A title", "", None], "text": [d["text"] for d in docs]})
    np.testing.assert_allclose(as_rows, expected, atol=1e-6)
    np.testing.assert_allclose(as_columns, expected, atol=1e-6)
    assert "None" not in document_text({"title": "", "text": docs[2]["text"]})
    tensor = tiny_encoder.encode_queries(["one query"], convert_to_tensor=True)
    assert tuple(tensor.shape) == (1, 32) and isinstance(tiny_encoder, DenseEncoder)
