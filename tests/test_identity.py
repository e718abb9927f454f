"""A result's identity holds exactly what can change its numbers; older result files are migrated when read."""
import json

import pytest

from searchr3_eval.cli import main
from searchr3_eval.data import load_task
from searchr3_eval.errors import UserError
from searchr3_eval.models import ModelOptions, describe, parse_model_specs
from searchr3_eval.models.bm25 import BM25Retriever
from searchr3_eval.report import table
from searchr3_eval.results import SCHEMA_VERSION, load_results, read_result


def searchr3_args(model_dir, data_dir, out, *extra):
    return ["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", f"searchr3:{model_dir}",
            "--add-embed-token", "--dtype", "float32", "--output-dir", str(out), "--no-cache", "--quiet",
            "--max-length", "200", *extra]


def as_version_2(path, model_dir, data_dir):
    """Rewrite a result file as the previous schema wrote it: generation settings in a direct-mode identity, the
    absolute task folder as source, a spec with a trailing slash, under another file name."""
    data = json.loads(path.read_text())
    data["schema_version"] = 2
    data["settings"].update(max_new_tokens=64, backend="transformers", analysis_end=None)
    data["settings"]["prompts"]["reasoning_system"] = "Please represent user queries."
    data["source"] = str((data_dir / "MiniGSM").resolve())
    data["model_spec"] = f"searchr3:{model_dir}/"
    old = path.with_name("MiniGSM-000000000000.json")
    old.write_text(json.dumps(data))
    path.unlink()
    return old


def test_direct_mode_identity_ignores_generation_settings():
    (spec,) = parse_model_specs("searchr3:smollm2-sft")
    plain = describe(spec, ModelOptions(dtype="float32"))
    assert describe(spec, ModelOptions(dtype="float32", max_new_tokens=32, backend="vllm")) == plain
    assert not {"max_new_tokens", "backend", "analysis_end"} & set(plain.settings)
    assert "reasoning_system" not in plain.settings["prompts"]
    reasoning = describe(spec, ModelOptions(dtype="float32", reasoning="on"))
    assert reasoning.settings["max_new_tokens"] == 64 and "reasoning_system" in reasoning.settings["prompts"]
    assert describe(spec, ModelOptions(dtype="float32", reasoning="on", max_new_tokens=32)) != reasoning


def test_a_version_2_result_is_migrated_and_reused_with_one_row(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(searchr3_args(tiny_model_dir, data_dir, out)) == 0
    (path,) = (out / "runs").glob("*/*.json")
    assert read_result(path).source == "MiniGSM"  # relative to --data-dir, not this machine's path
    old = as_version_2(path, tiny_model_dir, data_dir)
    migrated = read_result(old)
    assert migrated.schema_version == SCHEMA_VERSION and migrated.source == "MiniGSM"
    assert migrated.model_spec == f"searchr3:{tiny_model_dir}" and "analysis_end" not in migrated.settings
    capsys.readouterr()
    # a reasoning-only option with reasoning off changes nothing: the migrated result is reused
    assert main(searchr3_args(tiny_model_dir, data_dir, out, "--max-new-tokens", "32")) == 0
    assert "skip" in capsys.readouterr().out and list((out / "runs").glob("*/*.json")) == [old]
    assert len(table(load_results(out)).rows) == 1
    # --overwrite replaces the migrated file instead of adding a second file of the same identity
    assert main(searchr3_args(tiny_model_dir, data_dir, out, "--overwrite")) == 0
    (rewritten,) = (out / "runs").glob("*/*.json")
    assert rewritten != old and read_result(rewritten).identity == migrated.identity


def test_rows_are_labelled_without_null_for_settings_a_row_does_not_have(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "r"
    assert main(searchr3_args(tiny_model_dir, data_dir, out)) == 0
    assert main(searchr3_args(tiny_model_dir, data_dir, out, "--reasoning", "on", "--max-new-tokens", "4")) == 0
    labels = [row.label for row in table(load_results(out)).rows]
    assert len(labels) == 2 and not any("null" in label for label in labels)
    assert sorted(label.split(" [")[1] for label in labels) == ["reasoning=off]", "reasoning=on]"]  # short, telling
    assert main(searchr3_args(tiny_model_dir, data_dir, out, "--reasoning", "on", "--max-new-tokens", "6")) == 0
    labels = [row.label for row in table(load_results(out)).rows]
    assert len(set(labels)) == 3 and any("max_new_tokens=6" in label for label in labels)


def test_one_model_named_two_ways_is_one_spec(data_dir, tmp_path):
    specs = parse_model_specs("minilm,st:sentence-transformers/all-MiniLM-L6-v2,all-MiniLM-L6-v2,"
                              "sentence-transformers/all-MiniLM-L6-v2")
    assert [s.text for s in specs] == ["minilm"]
    assert [s.text for s in parse_model_specs("BAAI/bge-small-en-v1.5,st:BAAI/bge-small-en-v1.5")] == \
        ["st:BAAI/bge-small-en-v1.5"]
    assert [s.text for s in parse_model_specs("searchr3:runs/a/,searchr3:runs/a")] == ["searchr3:runs/a"]


def test_an_embedded_task_records_where_it_came_from_without_a_path():
    assert load_task("GSM8KRetrieval").source == "embedded:GSM8KRetrieval"


def test_bm25_scores_queries_without_indexed_words_as_zero(data_dir):
    task = load_task("MiniGSM", data_dir)
    first = next(iter(task.queries))
    task.queries.update({"blank": "", "stopwords": "the of and a", "unknown": "zyxwvut qqqq"})
    run = BM25Retriever(show_progress=False).search(task, top_k=10)
    assert run["blank"] == run["stopwords"] == run["unknown"] == {}
    assert len(run[first]) == 10


def test_bm25_on_a_corpus_of_blank_documents_is_one_error_line(data_dir, capsys):
    corpus = data_dir / "MiniGSM" / "corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    corpus.write_text("".join(json.dumps({"_id": r["_id"], "title": "", "text": "the a"}) + "\n" for r in rows))
    with pytest.raises(UserError, match="MiniGSM: no document has a word BM25 can index"):
        BM25Retriever(show_progress=False).search(load_task("MiniGSM", data_dir))
    assert main(["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", "bm25", "--quiet",
                 "--output-dir", str(data_dir.parent / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no document has a word BM25 can index" in err


def test_tasks_with_a_missing_data_dir_is_the_error_run_gives(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["tasks", "--data-dir", str(missing)]) == 2
    tasks_err = capsys.readouterr().err.strip()
    assert main(["run", "--data-dir", str(missing), "--quiet"]) == 2
    assert tasks_err == capsys.readouterr().err.strip() and "is not a folder" in tasks_err
