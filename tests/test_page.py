"""The results page is generated from its spec and the files it names; nothing on it is typed by hand."""
import json

import pytest

from searchr3_eval.cli import main
from searchr3_eval.errors import UserError
from searchr3_eval.page import render_page


def test_the_page_renders_leaderboards_included_files_and_benchmarks(data_dir, tmp_path):
    results = tmp_path / "results"
    assert main(["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", "bm25", "--quiet",
                 "--output-dir", str(results / "mini")]) == 0
    (results / "verify").mkdir()
    (results / "verify" / "matrix.md").write_text("| condition | model |\n|---|---|\n1 passed, 0 failed\n")
    (results / "bench.json").write_text(json.dumps({"benchmark": "speed of x", "ratio": 1.5,
                                                    "variants": {"fast": {"docs_per_second": 12.0}, "slow": {"docs_per_second": 3.0}}}))
    (results / "page.yaml").write_text(
        "title: Results\nintro: Read from the files.\nsections:\n"
        "  - {title: Mini, command: searchr3-eval run --tasks MiniGSM, leaderboard: mini, metrics: [ndcg_at_10, mrr_at_10]}\n"
        "  - {title: Verify, command: searchr3-eval verify, include: verify/matrix.md}\n"
        "  - {title: Speed, command: python bench.py, note: Two variants., benchmark: bench.json}\n")
    assert main(["page", "--results-dir", str(results)]) == 0
    page = (results / "README.md").read_text()
    score = json.loads(next((results / "mini" / "runs" / "bm25").glob("*.json")).read_text())["scores"]["ndcg_at_10"]
    assert f"| BM25 | {100 * score:.2f} | {100 * score:.2f} |" in page and "MRR@10 x100" in page
    assert "```bash\nsearchr3-eval run --tasks MiniGSM\n```" in page and "1 passed, 0 failed" in page
    assert "- ratio: 1.5" in page and "| fast | 12 |" in page and "Two variants." in page
    assert page.index("## Mini") < page.index("## Verify") < page.index("## Speed")


def test_a_leaderboard_section_marks_differences_from_the_baseline_it_names(data_dir, tmp_path):
    results = tmp_path / "results"
    assert main(["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", "bm25,minilm", "--quiet",
                 "--output-dir", str(results / "mini"), "--no-cache"]) == 0
    (results / "page.yaml").write_text(
        "sections:\n  - {title: A, command: c, leaderboard: mini}\n"
        "  - {title: B, command: c, leaderboard: mini, baseline: minilm}\n")
    page = render_page(results, results / "page.yaml")
    first, second = page.split("## B")
    assert "significantly different from BM25" in first and "significantly different from all-MiniLM-L6-v2" in second


@pytest.mark.parametrize("section, message", [
    ("{title: A, command: c, include: nothing.md}", "missing file"),
    ("{title: A, leaderboard: x}", "needs title, command and one of"),
    ("{title: A, command: c, leaderboard: empty}", "no results under"),
])
def test_a_bad_page_spec_is_one_error(tmp_path, section, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "page.yaml").write_text(f"sections:\n  - {section}\n")
    with pytest.raises(UserError, match=message):
        render_page(tmp_path, tmp_path / "page.yaml")


def test_verify_writes_the_matrix_the_page_includes(shared_beir, tmp_path):
    conditions = tmp_path / "c.yaml"
    conditions.write_text("conditions:\n  - {name: bm25, model: bm25, rows: [{task: medline, scores: {ndcg_at_10: 0.6956},"
                          " tolerance: 0.0005, source: t}]}\n")
    assert main(["verify", "--data-dir", str(shared_beir), "--conditions", str(conditions), "--output-dir",
                 str(tmp_path / "v"), "--quiet"]) == 0
    assert (tmp_path / "v" / "matrix.md").read_text().splitlines()[-1] == "1 passed, 0 failed"
