import csv
import io

from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.report import csv_text, load_results, markdown, table, write_report


def result(model: str, task: str, ndcg: float) -> dict:
    return {
        "model": model, "model_spec": model.lower(), "task": task, "revision": "r1", "num_documents": 10,
        "num_queries": 5, "wall_seconds": 1.0, "docs_per_second": 10.0,
        "scores": {"ndcg_at_10": ndcg, "recall_at_100": 1.0, "map_at_100": ndcg, "mrr_at_10": ndcg},
    }


def write(out, *results):
    for r in results:
        atomic_write_json(out / "runs" / r["model_spec"] / f"{r['task']}.json", r)


def test_table_has_models_by_tasks_with_average_best_first(tmp_path):
    write(tmp_path, result("A", "T1", 0.2), result("A", "T2", 0.4), result("B", "T1", 0.5), result("B", "T2", 0.7), result("C", "T1", 0.9))
    header, rows = table(load_results(tmp_path), "ndcg_at_10")
    assert header == ["Model", "T1", "T2", "Average"]
    assert [r[0] for r in rows] == ["B", "A", "C"]
    assert rows[0][-1] == 0.6 and rows[2][2] is None and rows[2][-1] is None
    parsed = list(csv.reader(io.StringIO(csv_text(load_results(tmp_path)))))
    assert parsed[1] == ["B", "0.5000", "0.7000", "0.6000"] and parsed[3] == ["C", "0.9000", "", ""]
    md = markdown(load_results(tmp_path))
    assert "| B | 50.00 | 70.00 | 60.00 |" in md and "## MRR@10" in md


def test_write_report_makes_tables_and_png(tmp_path):
    write(tmp_path, result("A", "T1", 0.2), result("B", "T1", 0.5))
    paths = write_report(tmp_path)
    assert [p.name for p in paths] == ["leaderboard.md", "leaderboard.csv", "ndcg_at_10.png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
