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
    beir = resolve_task_names("BEIR")
    assert "SciFact" in beir and "CQADupstackUnixRetrieval" in beir and len(beir) == 14 + 12
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


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_non_utf8_bytes_name_file_and_line(data_dir, name):
    path = data_dir / "MiniGSM" / name
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"d", b"\xe9d", 1).replace(b"q", b"\xe9q", 1)
    path.write_bytes(b"".join(lines))
    with pytest.raises(UserError, match=rf"{path} line 4: not valid UTF-8 \(byte 0xe9 at column"):
        load_beir_folder(data_dir / "MiniGSM")


@pytest.mark.parametrize("name, kind", [("corpus.jsonl", "document"), ("queries.jsonl", "query")])
def test_duplicate_ids_are_named(data_dir, name, kind):
    path = data_dir / "MiniGSM" / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[7]]) + "\n")
    ident = json.loads(lines[7])["_id"]
    with pytest.raises(UserError, match=rf"line 41: duplicate {kind} id '{ident}'"):
        load_beir_folder(data_dir / "MiniGSM")


def test_task_folder_without_corpus_says_so(data_dir):
    (data_dir / "MiniGSM" / "corpus.jsonl").unlink()
    assert resolve_task_names("MiniGSM", data_dir) == ["MiniGSM"]
    with pytest.raises(UserError, match=r"task MiniGSM: missing corpus.jsonl in .*MiniGSM"):
        load_task("MiniGSM", data_dir)


def test_qrels_naming_unknown_documents_warn_with_the_count(data_dir, caplog):
    qrels = data_dir / "MiniGSM" / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q1\tnope1\t1\nq2\tnope2\t1\n")
    task = load_beir_folder(data_dir / "MiniGSM")
    assert task.qrels["q1"]["nope1"] == 1
    assert "qrels name 2 documents not in corpus.jsonl (e.g. 'nope1')" in caplog.text


def test_missing_title_and_null_title_are_empty(data_dir):
    corpus = data_dir / "MiniGSM" / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "x1", "title": None, "text": "t"}) + "\n" + json.dumps({"_id": "x2", "text": "u"}) + "\n")
    task = load_beir_folder(data_dir / "MiniGSM")
    assert task.corpus == {"x1": {"title": "", "text": "t"}, "x2": {"title": "", "text": "u"}}
