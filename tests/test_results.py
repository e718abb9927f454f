"""Result identity: only an identical, readable result is reused; every identity keeps its own file and row."""
import json
import stat
import subprocess
import sys

import pytest

from searchr3_eval.cli import main
from searchr3_eval.errors import UserError
from searchr3_eval.report import markdown, table, write_report
from searchr3_eval.results import SCHEMA_VERSION, TaskResult, load_results, read_result, result_path


def run_bm25(out, data_dir, *extra):
    return main(["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", "bm25", "--output-dir", str(out),
                 "--quiet", *extra])


def result_files(out):
    return sorted((out / "runs").glob("*/*.json"))


def test_result_roundtrip_keeps_per_query_scores(data_dir, tmp_path):
    assert run_bm25(tmp_path / "r", data_dir) == 0
    (path,) = result_files(tmp_path / "r")
    result = read_result(path)
    assert isinstance(result, TaskResult) and result.schema_version == SCHEMA_VERSION
    assert set(result.per_query["ndcg_at_10"]) == {f"q{i}" for i in range(40)}
    assert result.scores["ndcg_at_10"] == pytest.approx(sum(result.per_query["ndcg_at_10"].values()) / 40)
    assert TaskResult.from_dict(json.loads(path.read_text())) == result
    assert result_path(tmp_path / "r", result.identity) == path


@pytest.mark.parametrize("extra", [["--top-k", "50"], ["--split", "dev"]])
def test_changed_settings_run_again_and_keep_both(data_dir, tmp_path, capsys, extra):
    qrels = data_dir / "MiniGSM" / "qrels"
    (qrels / "dev.tsv").write_text("\n".join(qrels.joinpath("test.tsv").read_text().splitlines()[:11]) + "\n")
    out = tmp_path / "r"
    assert run_bm25(out, data_dir) == 0
    capsys.readouterr()
    assert run_bm25(out, data_dir, *extra) == 0
    assert "skip" not in capsys.readouterr().out
    results = load_results(out)
    assert len(results) == 2 and len({json.dumps(r.identity, sort_keys=True) for r in results}) == 2
    if "--split" in extra:
        assert {r.num_queries for r in results} == {40, 10}
        assert "| MiniGSM | MiniGSM (dev) |" in (out / "leaderboard.md").read_text()


def test_changed_task_files_are_a_new_identity(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert run_bm25(out, data_dir) == 0
    corpus = data_dir / "MiniGSM" / "corpus.jsonl"
    corpus.write_text(corpus.read_text().replace("The answer is", "So the answer is"))
    capsys.readouterr()
    assert run_bm25(out, data_dir) == 0
    assert "skip" not in capsys.readouterr().out and len(result_files(out)) == 2
    assert {c.split("[data ")[0].strip() for c in table(load_results(out)).columns} == {"MiniGSM"}


def test_truncated_result_is_redone_not_skipped(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert run_bm25(out, data_dir) == 0
    (path,) = result_files(out)
    good = path.read_text()
    path.write_text(good[: len(good) // 2])
    capsys.readouterr()
    assert run_bm25(out, data_dir) == 0
    assert "skip" not in capsys.readouterr().out
    assert read_result(path).scores == json.loads(good)["scores"]


def test_identical_result_is_skipped_and_overwrite_redoes(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert run_bm25(out, data_dir) == 0
    (path,) = result_files(out)
    first = read_result(path)
    capsys.readouterr()
    assert run_bm25(out, data_dir) == 0
    assert "skip bm25 on MiniGSM: result exists" in capsys.readouterr().out
    assert read_result(path).finished_at == first.finished_at
    assert run_bm25(out, data_dir, "--overwrite") == 0
    assert read_result(path).scores == first.scores and not list(out.rglob("*.tmp"))


def test_malformed_result_file_is_one_line_in_report(data_dir, tmp_path):
    out = tmp_path / "r"
    assert run_bm25(out, data_dir) == 0
    (path,) = result_files(out)
    path.write_bytes(b'{"schema_version": 2, "model": "\xff"}')
    proc = subprocess.run([sys.executable, "-m", "searchr3_eval.cli", "report", "--output-dir", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"searchr3-eval: error: unreadable result file {path}: not valid UTF-8 at line 1"
    path.write_text(json.dumps({"schema_version": 1, "model": "x"}))
    with pytest.raises(UserError, match=f"result file {path}: result schema version 1"):
        load_results(out)


def test_written_files_have_normal_permissions(data_dir, tmp_path):
    out = tmp_path / "r"
    assert run_bm25(out, data_dir) == 0
    for path in [*result_files(out), out / "leaderboard.md", out / "leaderboard.csv", out / "plots" / "ndcg_at_10.png"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


@pytest.mark.parametrize("spec", ["..", "st:../../escape", "searchr3:/", "st:./."])
def test_no_model_spec_writes_outside_runs(tmp_path, spec):
    identity = {"model_spec": spec, "revision": "r", "settings": {}, "task": "..", "split": "test",
                "task_fingerprint": "f", "top_k": 10}
    path = result_path(tmp_path, identity).resolve()
    assert path.parent.parent == (tmp_path / "runs").resolve() and path.parent.name not in (".", "..")


def make_result(spec: str, name: str, task: str, per_query: dict[str, float], **extra) -> TaskResult:
    base = dict(model=name, model_spec=spec, revision="rev1", settings={}, task=task, split="test", default_split="test",
                task_fingerprint="f1", top_k=100, num_documents=10, num_queries=len(per_query), source="here")
    base.update(extra)
    mean = sum(per_query.values()) / len(per_query)
    return TaskResult(scores={m: mean for m in ("ndcg_at_10", "recall_at_100", "map_at_100", "mrr_at_10")},
                      per_query={m: per_query for m in ("ndcg_at_10", "recall_at_100", "map_at_100", "mrr_at_10")}, **base)


def test_rows_sharing_a_display_name_keep_separate_labelled_rows():
    a = make_result("st:/a/model", "model", "T", {"q1": 0.2, "q2": 0.4})
    b = make_result("st:/b/model", "model", "T", {"q1": 0.6, "q2": 0.8})
    c = make_result("st:/b/model", "model", "T", {"q1": 0.1, "q2": 0.1}, revision="rev2")
    t = table([a, b, c])
    labels = [row.label for row in t.rows]
    assert len(set(labels)) == 3
    assert labels[0] == "model [revision=rev1, spec=st:/b/model]" and t.rows[0].cells["T"] == pytest.approx(0.7)
    assert {round(row.cells["T"], 2) for row in t.rows} == {0.3, 0.7, 0.1}


def test_paired_significance_against_the_bm25_baseline():
    queries = [f"q{i}" for i in range(30)]
    bm25 = make_result("bm25", "BM25", "T", {q: 0.3 + 0.01 * (i % 5) for i, q in enumerate(queries)})
    better = make_result("minilm", "MiniLM", "T", {q: 0.6 + 0.01 * (i % 7) for i, q in enumerate(queries)})
    same = make_result("other", "Other", "T", {q: 0.3 + 0.01 * ((i + 1) % 5) for i, q in enumerate(queries)})
    t = table([bm25, better, same])
    rows = {row.label: row for row in t.rows}
    assert t.baseline == "BM25" and rows["MiniLM"].significant == {"T": True} and rows["Other"].significant == {"T": False}
    assert "| MiniLM | 62.83† | 62.83 |" in markdown([bm25, better, same])
    assert "| Other | 32.00 | 32.00 |" in markdown([bm25, better, same])
    with pytest.raises(UserError, match="--baseline 'nope'"):
        table([bm25, better], baseline="nope")
    assert table([bm25, better], baseline="minilm").rows[1].significant == {"T": True}


def first_row(markdown_text: str, label: str) -> str:
    """The nDCG@10 table's line of row ``label``."""
    return next(line for line in markdown_text.splitlines() if line.startswith(f"| {label} |"))


def test_significance_keeps_p_values_and_corrects_over_the_grid(tmp_path):
    from scipy.stats import false_discovery_control, ttest_rel

    from searchr3_eval.report import Significance

    queries = [f"q{i}" for i in range(40)]
    bm25 = {q: 0.5 + 0.1 * ((i * 7) % 5) for i, q in enumerate(queries)}
    results = []
    for task in ("T1", "T2", "T3", "T4"):
        results.append(make_result("bm25", "BM25", task, bm25))
        for centre, name in [(0.7 if task == "T1" else 0.9, "A"), (0.9, "B")]:  # A on T1: t-test p = 0.043
            scores = {q: v + 0.04 * ((i % 3) - centre) for i, (q, v) in enumerate(bm25.items())}
            results.append(make_result(f"st:{name}", name, task, scores))
    plain = table(results, significance=Significance(correction="none"))
    corrected = table(results)
    raw = [row.pvalues[c] for row in plain.rows for c in plain.columns if c in row.pvalues]
    expected_t = ttest_rel([v + 0.04 * ((i % 3) - 0.7) for i, v in enumerate(bm25.values())], list(bm25.values())).pvalue
    assert next(r for r in plain.rows if r.label == "A").pvalues["T1"] == pytest.approx(expected_t)
    adjusted = [row.adjusted[c] for row in corrected.rows for c in corrected.columns if c in row.adjusted]
    assert adjusted == pytest.approx(list(false_discovery_control(raw, method="bh")))
    assert sum(p < 0.05 for p in raw) == 1 and not any(p < 0.05 for p in adjusted)  # 8 comparisons: not significant
    assert "†" not in first_row(markdown(results), "A")
    assert "†" in first_row(markdown(results, significance=Significance(correction="none")), "A")
    permutation = table(results, significance=Significance("permutation", "none"))
    row_a = next(r for r in permutation.rows if r.label == "A")
    assert row_a.pvalues["T1"] == pytest.approx(expected_t, abs=0.015)
    for r in results:
        r.save(tmp_path)
    assert main(["report", "--output-dir", str(tmp_path), "--test", "permutation", "--correction", "none"]) == 0
    lines = (tmp_path / "significance.csv").read_text().splitlines()
    assert lines[0] == "metric,model,task,baseline,test,correction,p_value,p_adjusted,significant" and len(lines) == 1 + 4 * 2 * 4
    assert "randomisation test (10,000 resamples) over per-query scores, no correction" in \
        (tmp_path / "leaderboard.md").read_text()
    with pytest.raises(UserError, match="unknown significance test 'z'"):
        Significance("z")


def test_cqadupstack_forums_collapse_into_the_mteb_aggregate():
    from searchr3_eval.data import AGGREGATES, GROUPS

    forums = AGGREGATES["CQADupstackRetrieval"]
    assert len(forums) == 12 and set(forums) <= set(GROUPS["BEIR"]) and len(GROUPS["BEIR"]) == 26
    results = [make_result("bm25", "BM25", f, {"q": 0.1 * (i + 1)}) for i, f in enumerate(forums)]
    results.append(make_result("bm25", "BM25", "SciFact", {"q": 0.5}))
    t = table(results)
    assert t.columns == ["CQADupstackRetrieval", "SciFact"]
    assert t.rows[0].cells["CQADupstackRetrieval"] == pytest.approx(0.65) and t.rows[0].average == pytest.approx(0.575)


def test_write_report_makes_tables_and_png(tmp_path):
    for r in (make_result("bm25", "BM25", "T1", {"q": 0.2}), make_result("minilm", "MiniLM", "T1", {"q": 0.5})):
        r.save(tmp_path)
    paths = write_report(tmp_path)
    assert [p.name for p in paths] == ["leaderboard.md", "leaderboard.csv", "significance.csv", "ndcg_at_10.png"]
    assert paths[1].read_text().splitlines() == ["Model,T1,Average", "MiniLM,0.5000,0.5000", "BM25,0.2000,0.2000"]
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
