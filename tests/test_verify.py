"""Published and reference scores reproduce on the real BEIR files in ../shared/data (the verify matrix)."""
import pytest

from searchr3_eval.errors import UserError
from searchr3_eval.verify import format_matrix, load_expected, verify


def test_expected_scores_file_is_complete():
    checks = load_expected()
    assert {(c.model, c.task) for c in checks} >= {("bm25", t) for t in ("SciFact", "cranfield", "cisi", "medline")}
    minilm_scifact = next(c for c in checks if (c.model, c.task) == ("minilm", "SciFact"))
    assert minilm_scifact.expected == 0.64508 and "MTEB" in minilm_scifact.source


def test_bm25_rows_reproduce(shared_beir, tmp_path):
    checks = verify(shared_beir, models="bm25", output_dir=tmp_path, show_progress=False)
    assert len(checks) == 4 and all(c.passed for c in checks), format_matrix(checks)
    assert format_matrix(checks).splitlines()[-1] == "4 passed, 0 failed"


def test_minilm_row_on_a_small_task_reproduces(shared_beir, tmp_path):
    (check,) = verify(shared_beir, models="minilm", tasks="medline", output_dir=tmp_path, show_progress=False)
    assert check.passed, format_matrix([check])


def test_a_wrong_expectation_fails(shared_beir, tmp_path):
    expected = tmp_path / "expected.yaml"
    expected.write_text("- {task: medline, model: bm25, metric: ndcg_at_10, value: 0.7, tolerance: 0.001, source: test}\n")
    (check,) = verify(shared_beir, expected, output_dir=tmp_path / "out", show_progress=False)
    assert not check.passed and "FAIL (expected 0.7 ± 0.001)" in format_matrix([check])
    expected.write_text("- {task: medline, model: bm25, metric: ndcg, value: 0.7, tolerance: 0.001, source: test}\n")
    with pytest.raises(UserError, match="row 1: unknown metric 'ndcg'"):
        load_expected(expected)
