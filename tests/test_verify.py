"""The reproducible conditions hold on the real BEIR files in ../shared/data (the verify matrix)."""
import re

import pytest

from searchr3_eval.errors import UserError
from searchr3_eval.verify import format_matrix, load_conditions, verify


@pytest.fixture(scope="module")
def embedding_cache(tmp_path_factory):
    """One embedding cache for this module's runs: MiniLM's Medline documents are encoded once."""
    return tmp_path_factory.mktemp("verify-cache")


def test_conditions_file_is_complete():
    checks = load_conditions()
    tasks = ("SciFact", "NFCorpus", "cranfield", "cisi", "medline", "GSM8KRetrieval")
    assert {(c.condition.model, c.task) for c in checks} >= {("bm25", t) for t in tasks} | {("minilm", t) for t in tasks}
    published = {c.task: c for c in checks if c.condition.model == "minilm" and "MTEB" in c.source}
    assert published["SciFact"].expected == 0.64508 and published["NFCorpus"].expected == 0.3159
    assert {c.task for c in checks if c.fast and c.condition.model == "minilm"} == {"medline", "GSM8KRetrieval"}


def test_fast_rows_reproduce(shared_beir, tmp_path, embedding_cache):
    """What CI runs: BM25 on every shared task and the default task, MiniLM on Medline and the default task."""
    checks = verify(shared_beir, fast=True, output_dir=tmp_path, cache_dir=embedding_cache, show_progress=False)
    assert len(checks) == 8 and all(c.passed for c in checks), format_matrix(checks)
    assert format_matrix(checks).splitlines()[-1] == "8 passed, 0 failed"


def test_a_condition_carries_its_encoder_options(shared_beir, tmp_path, embedding_cache):
    conditions = tmp_path / "conditions.yaml"
    conditions.write_text(
        "conditions:\n"
        "  - {name: bm25, model: bm25, rows: [{task: medline, scores: {ndcg_at_10: 0.6956}, tolerance: 0.0005, source: t}]}\n"
        "  - {name: minilm-prompted, model: minilm, options: {query_prompt: 'query: '},\n"
        "     rows: [{task: medline, scores: {ndcg_at_10: 0.7875}, tolerance: 0.0005, source: t}]}\n")
    checks = verify(shared_beir, conditions, output_dir=tmp_path / "out", cache_dir=embedding_cache,
                    show_progress=False)
    plain, prompted = checks
    assert plain.passed and prompted.measured is not None and not prompted.passed  # the prompt changes the score
    assert "| minilm-prompted | minilm | ndcg_at_10 |" in format_matrix(checks)


@pytest.mark.parametrize("text, message", [
    ("conditions:\n  - {name: a, model: bm25, rows: [{task: medline, scores: {ndcg: 0.7}, tolerance: 0.1, source: t}]}\n",
     "condition 1 row 1: unknown metric 'ndcg'"),
    ("conditions:\n  - {name: a, model: bm25, options: {speed: 2}, rows: []}\n", "condition 1: unknown options ['speed']"),
    ("conditions:\n  - {name: a, model: bm25, options: {reasoning: on}, rows: []}\n",
     "condition 1: --reasoning must be off, on or all, not True"),
    ("conditions:\n  - {name: a, model: bm25, rows: []}\n  - {name: a, model: minilm, rows: []}\n",
     "condition 2: a second condition named 'a'"),
    ("conditions:\n  - {name: a, rows: []}\n", "condition 1: needs the keys model, name, rows"),
])
def test_a_malformed_conditions_file_names_the_condition(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        load_conditions(path)


def test_a_wrong_expectation_fails(shared_beir, tmp_path):
    conditions = tmp_path / "c.yaml"
    conditions.write_text(
        "conditions:\n  - {name: bm25, model: bm25, rows: [{task: medline, scores: {ndcg_at_10: 0.7}, tolerance: 0.001, source: t}]}\n")
    (check,) = verify(shared_beir, conditions, output_dir=tmp_path / "out", show_progress=False)
    assert not check.passed and "FAIL (expected 0.7 ± 0.001)" in format_matrix([check])
