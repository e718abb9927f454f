import json
import subprocess
import sys

import pytest

from searchr3_eval.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchr3_eval.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--tasks", "NoSuchTask"], "unknown task 'NoSuchTask'"),
        (["run", "--tasks", "MiniGSM", "--data-dir", "/nonexistent"], "is not a folder"),
        (["run", "--models", "searchr3:"], "needs a name or path"),
        (["report", "--output-dir", "/nonexistent-results"], "no results under"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_malformed_file_gives_one_line(data_dir, tmp_path):
    (data_dir / "MiniGSM" / "queries.jsonl").write_text("not json\n")
    proc = run_cli("run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", "bm25", "--output-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"searchr3-eval: error: malformed JSON in {data_dir}/MiniGSM/queries.jsonl line 1: Expecting value"


def test_sentence_transformer_that_cannot_load_is_a_user_error(data_dir, tmp_path):
    proc = run_cli("run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", "st:/no/such/model",
                   "--output-dir", str(tmp_path / "r"), "--no-cache")
    assert proc.returncode == 2 and "could not load sentence-transformers model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_resumes_and_overwrite_redoes(data_dir, tmp_path, capsys):
    out = tmp_path / "results"
    args = ["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", "bm25", "--output-dir", str(out), "--quiet"]
    assert main(args) == 0
    result_file = out / "runs" / "bm25" / "MiniGSM.json"
    first = json.loads(result_file.read_text())
    assert first["num_documents"] == 40 and first["num_queries"] == 40 and 0 < first["scores"]["ndcg_at_10"] <= 1
    assert (out / "leaderboard.md").exists() and (out / "plots" / "ndcg_at_10.png").stat().st_size > 1000
    capsys.readouterr()

    assert main(args) == 0
    assert "skip bm25 on MiniGSM: result exists" in capsys.readouterr().out
    assert json.loads(result_file.read_text())["finished_at"] == first["finished_at"]

    assert main([*args, "--overwrite"]) == 0
    assert "skip" not in capsys.readouterr().out
    assert json.loads(result_file.read_text())["scores"] == first["scores"]
    assert not list(out.rglob("*.tmp"))


def test_dense_run_uses_embedding_cache_on_second_run(data_dir, tmp_path):
    common = ["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", "minilm",
              "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main([*common, "--output-dir", str(tmp_path / "a")]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "b")]) == 0
    first = json.loads((tmp_path / "a" / "runs" / "minilm" / "MiniGSM.json").read_text())
    second = json.loads((tmp_path / "b" / "runs" / "minilm" / "MiniGSM.json").read_text())
    assert first["docs_encoded"] == 40 and first["docs_from_cache"] == 0
    assert second["docs_encoded"] == 0 and second["docs_from_cache"] == 40 and second["queries_from_cache"] == 40
    assert second["scores"] == pytest.approx(first["scores"])


def test_searchr3_model_without_embed_token(tiny_model_dir, data_dir, tmp_path, capsys):
    args = ["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", f"searchr3:{tiny_model_dir}",
            "--output-dir", str(tmp_path / "r"), "--no-cache", "--quiet", "--max-length", "256"]
    assert main(args) == 2
    assert "has no <|embed_token|> token" in capsys.readouterr().err
    assert main([*args, "--add-embed-token"]) == 0
    (result,) = (tmp_path / "r" / "runs").glob("*/MiniGSM.json")
    data = json.loads(result.read_text())
    assert data["embedding_dim"] == 32 and data["settings"]["max_length"] == 256
