"""Dense search: exact search over blocks (memory-mapped corpora) and faiss's approximate indexes."""
import numpy as np
import pytest

from searchr3_eval import evaluate
from searchr3_eval.errors import UserError
from searchr3_eval.models import ModelOptions
from searchr3_eval.results import load_results
from searchr3_eval.retrieval import dense_search, parse_index


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    vectors = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def top_ids(run: dict, k: int) -> dict[str, list[str]]:
    return {q: sorted(docs, key=lambda d: -docs[d])[:k] for q, docs in run.items()}


def test_exact_search_over_a_memory_mapped_corpus_in_blocks_matches_brute_force(tmp_path):
    docs, queries = clustered(1000), clustered(30, seed=1)
    stored = np.lib.format.open_memmap(tmp_path / "docs.npy", mode="w+", dtype=np.float32, shape=docs.shape)
    stored[:] = docs
    stored.flush()
    doc_ids, query_ids = [f"d{i}" for i in range(1000)], [f"q{i}" for i in range(30)]
    run = dense_search(query_ids, queries, doc_ids, np.load(tmp_path / "docs.npy", mmap_mode="r"), top_k=10,
                       block_rows=64, show_progress=False)
    scores = queries @ docs.T
    for i, q in enumerate(query_ids):
        expected = np.argsort(-scores[i], kind="stable")[:10]
        assert top_ids(run, 10)[q] == [doc_ids[j] for j in expected]
        assert np.allclose([run[q][doc_ids[j]] for j in expected], scores[i, expected], atol=1e-5)


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_of_the_exact_top_10(index):
    docs, queries = clustered(4000), clustered(50, seed=1)
    doc_ids, query_ids = [f"d{i}" for i in range(4000)], [f"q{i}" for i in range(50)]
    exact = top_ids(dense_search(query_ids, queries, doc_ids, docs, top_k=10, show_progress=False), 10)
    approx = top_ids(dense_search(query_ids, queries, doc_ids, docs, top_k=10, index=index, show_progress=False), 10)
    recall = np.mean([len(set(exact[q]) & set(approx[q])) / 10 for q in query_ids])
    assert recall >= 0.9
    # a one-list probe of a 64-list IVF misses much of it: the index is really approximate
    coarse = top_ids(dense_search(query_ids, queries, doc_ids, docs, top_k=10, index="ivf:nlist=64,nprobe=1",
                                  show_progress=False), 10)
    assert np.mean([len(set(exact[q]) & set(coarse[q])) / 10 for q in query_ids]) < recall


def test_index_names_are_canonical_and_mistakes_are_user_errors():
    assert parse_index("flat").name == "flat"
    assert parse_index("ivf").name == "ivf:nlist=0,nprobe=16"
    assert parse_index("hnsw: ef_search=512").name == "hnsw:ef_construction=200,ef_search=512,m=32"
    for text, message in [("annoy", "unknown index 'annoy'"), ("ivf:k=3", "index ivf has no parameter 'k'"),
                          ("hnsw:m=0", "must be a positive integer"), ("flat:x=1", "parameters: none")]:
        with pytest.raises(UserError, match=message):
            parse_index(text)


def test_the_index_enters_the_result_identity_and_exact_results_keep_theirs(data_dir, tmp_path, tiny_model_dir):
    """An hnsw run is a separate result beside the flat one; a flat (exact) run keeps the identity it had."""
    spec = f"searchr3:{tiny_model_dir}"
    for index in ["flat", "hnsw", "flat"]:
        evaluate(spec, "MiniGSM", tmp_path / "r", data_dir=data_dir, echo=lambda _: None, report=False,
                 options=ModelOptions(show_progress=False, add_embed_token=True, index=index, dtype="float32"))
    results = load_results(tmp_path / "r")
    assert sorted(r.index for r in results) == ["flat", "hnsw:ef_construction=200,ef_search=256,m=32"]
    flat = next(r for r in results if r.index == "flat")
    assert "index" not in flat.identity and flat.timing["index"] == "flat"


def test_memory_mapped_corpus_embeddings_give_the_same_scores(data_dir, tmp_path, tiny_model_dir):
    scores = []
    for memmap_dir in [None, tmp_path / "mm"]:
        if memmap_dir:
            memmap_dir.mkdir()
        summary = evaluate(f"searchr3:{tiny_model_dir}", "MiniGSM", tmp_path / f"r{len(scores)}", data_dir=data_dir,
                           echo=lambda _: None, report=False, cache_dir=None,
                           options=ModelOptions(show_progress=False, add_embed_token=True, memmap_dir=memmap_dir))
        scores.append(summary.computed[0].per_query["ndcg_at_10"])
        assert summary.computed[0].timing["memory_mapped_corpus"] is (memmap_dir is not None)
    assert scores[0] == scores[1] and not any((tmp_path / "mm").iterdir())  # the file went with the search
