import json

import pytest

from searchr3_eval.data import DEFAULT_TASK, load_beir_folder, load_task, resolve_task_names
from searchr3_eval.errors import UserError


def test_embedded_task_loads_with_one_judged_solution_per_query():
    task = load_task(DEFAULT_TASK)
    assert len(task.corpus) == len(task.queries) == 1319
    assert all(len(docs) == 1 and set(docs.values()) == {1} for docs in task.qrels.values())
    assert task.queries["q1"] == "How many bolts in total does it take?"
    assert "<<" not in task.corpus["d0"]["text"] and task.corpus["d0"]["text"].endswith("The answer is 18.")


def test_beir_group_and_local_folders_resolve(data_dir):
    assert "SciFact" in resolve_task_names("BEIR") and len(resolve_task_names("BEIR")) == 14
    assert resolve_task_names("MiniGSM,SciFact,MiniGSM", data_dir) == ["MiniGSM", "SciFact"]
    (data_dir / "scifact").symlink_to(data_dir / "MiniGSM")
    assert load_task("SciFact", data_dir).source.endswith("scifact")


def test_unknown_task_is_a_user_error():
    with pytest.raises(UserError, match="unknown task 'SciFakt'"):
        resolve_task_names("SciFakt")


def test_beir_task_offline_without_local_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="downloads are off"):
        load_task("SciFact", tmp_path, download=False)


def test_malformed_jsonl_names_file_and_line(data_dir):
    corpus = data_dir / "MiniGSM" / "corpus.jsonl"
    lines = corpus.read_text().splitlines()
    lines[2] = '{"_id": "d2", "text": '
    corpus.write_text("\n".join(lines))
    with pytest.raises(UserError, match=r"malformed JSON in .*corpus.jsonl line 3"):
        load_beir_folder(data_dir / "MiniGSM")


def test_missing_file_and_missing_id(data_dir):
    with pytest.raises(UserError, match=r"missing file: .*qrels/dev.tsv"):
        load_beir_folder(data_dir / "MiniGSM", split="dev")
    (data_dir / "MiniGSM" / "queries.jsonl").write_text(json.dumps({"text": "no id"}) + "\n")
    with pytest.raises(UserError, match="'_id'"):
        load_beir_folder(data_dir / "MiniGSM")


def test_qrels_for_unknown_query_and_bad_line(data_dir):
    qrels = data_dir / "MiniGSM" / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q999\td1\t1\n")
    with pytest.raises(UserError, match="not in queries.jsonl"):
        load_beir_folder(data_dir / "MiniGSM")
    qrels.write_text("query-id\tcorpus-id\tscore\nq1 d1 one\n")
    with pytest.raises(UserError, match="malformed qrels line 2"):
        load_beir_folder(data_dir / "MiniGSM")


def test_trec_style_qrels_and_unjudged_queries_are_dropped(data_dir):
    (data_dir / "MiniGSM" / "qrels" / "test.tsv").write_text("q0\t0\td0\t2\nq5\t0\td5\t1\n")
    task = load_beir_folder(data_dir / "MiniGSM")
    assert task.qrels == {"q0": {"d0": 2}, "q5": {"d5": 1}}
    assert set(task.queries) == {"q0", "q5"} and len(task.corpus) == 40
