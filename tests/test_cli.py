import json
import os
import subprocess
import sys

import pytest

from searchr3_eval.cli import main
from tests.conftest import write_beir_folder


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; ``env`` adds to this process's environment."""
    return subprocess.run([sys.executable, "-m", "searchr3_eval.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--tasks", "NoSuchTask"], "unknown task 'NoSuchTask'"),
        (["run", "--tasks", "MiniGSM", "--data-dir", "/nonexistent"], "is not a folder"),
        (["run", "--models", "searchr3:"], "needs a name or path"),
        (["run", "--index", "annoy"], "unknown index 'annoy'; use one of flat, ivf, hnsw"),
        (["run", "--index", "hnsw:ef=9"], "index hnsw has no parameter 'ef'"),
        (["run", "--memmap-dir", "/nonexistent"], "--memmap-dir /nonexistent is not a folder"),
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


def test_dense_run_uses_embedding_cache_on_second_run(data_dir, tmp_path):
    common = ["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", "minilm",
              "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main([*common, "--output-dir", str(tmp_path / "a")]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "b")]) == 0
    (first_file,) = (tmp_path / "a" / "runs" / "minilm").glob("MiniGSM-*.json")
    first = json.loads(first_file.read_text())
    second = json.loads((tmp_path / "b" / "runs" / "minilm" / first_file.name).read_text())
    assert first["timing"]["docs_encoded"] == 40 and first["timing"]["docs_from_cache"] == 0
    assert second["timing"]["docs_encoded"] == 0 and second["timing"]["docs_from_cache"] == 40
    assert second["timing"]["queries_from_cache"] == 40
    assert second["scores"] == pytest.approx(first["scores"])

    # a new query prompt re-encodes the queries only: the documents' embeddings do not depend on it
    assert main([*common, "--query-prompt", "query: ", "--output-dir", str(tmp_path / "c")]) == 0
    (prompted_file,) = (tmp_path / "c" / "runs" / "minilm").glob("MiniGSM-*.json")
    prompted = json.loads(prompted_file.read_text())
    assert prompted["timing"]["docs_from_cache"] == 40 and prompted["timing"]["queries_encoded"] == 40
    assert prompted["scores"] != pytest.approx(first["scores"])


def test_searchr3_model_without_embed_token(tiny_model_dir, data_dir, tmp_path, capsys):
    args = ["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", f"searchr3:{tiny_model_dir}",
            "--output-dir", str(tmp_path / "r"), "--no-cache", "--quiet", "--max-length", "256"]
    assert main(args) == 2
    assert "has no <|embed_token|> token" in capsys.readouterr().err
    assert main([*args, "--add-embed-token"]) == 0
    (result,) = (tmp_path / "r" / "runs").glob("*/MiniGSM-*.json")
    data = json.loads(result.read_text())
    assert data["timing"]["embedding_dim"] == 32 and data["settings"]["max_length"] == 256
    assert data["settings"]["prompts"]["system"] == "Please represent user queries." and data["settings"]["add_embed_token"]


def test_quiet_silences_library_progress_bars(tmp_path):
    write_beir_folder(tmp_path / "data" / "Tiny", 6)
    args = ["run", "--tasks", "Tiny", "--data-dir", str(tmp_path / "data"), "--models", "basellm:smollm2",
            "--output-dir", str(tmp_path / "r"), "--no-cache", "--max-length", "64"]
    loud = run_cli(*args)
    assert loud.returncode == 0 and "Loading weights" in loud.stderr  # transformers' loading bar
    quiet = run_cli(*args, "--quiet", "--overwrite")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_unwritable_model_cache_is_one_line_before_any_conversion(tmp_path):
    write_beir_folder(tmp_path / "data" / "Tiny", 6)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    proc = run_cli("run", "--tasks", "Tiny", "--data-dir", str(tmp_path / "data"), "--models", "basellm:smollm2",
                   "--output-dir", str(tmp_path / "r"), "--no-cache", "--quiet", env={"SEARCHR3_CACHE": str(blocker)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert f"cannot write the converted GGUF model to {blocker}/models/gguf/" in proc.stderr
    assert "set SEARCHR3_CACHE to a writable folder" in proc.stderr


def test_bad_trainer_config_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "sft.yaml"
    config.write_text(f"model: smollm2\noutput_dir: {out}\ntrain_file: t.jsonl\nlearning_rate: 1e-4\nbatch_size: eight\n")
    proc = run_cli("train", "sft", "--config", str(config))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"searchr3-eval: error: {config}: batch_size must be int, not 'eight'"
    assert not out.exists()


def test_a_library_message_over_several_lines_is_one_error_line(tmp_path):
    """Malformed YAML (whose parser explains itself over several lines) names the file and line; a model that cannot
    load quotes transformers' multi-line message on one line, and a model path that does not exist says so."""
    config = tmp_path / "sft.yaml"
    config.write_text("model: [smollm2\noutput_dir: out\n")
    proc = run_cli("train", "sft", "--config", str(config))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"searchr3-eval: error: malformed YAML in {config} line 2: expected ',' or ']', but got ':'"
    (tmp_path / "t.jsonl").write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n"]}) + "\n")
    config.write_text(f"model: {tmp_path / 'no-model'}\noutput_dir: {tmp_path / 'out'}\ntrain_file: {tmp_path / 't.jsonl'}\n")
    proc = run_cli("train", "sft", "--config", str(config), env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"searchr3-eval: error: no model folder {tmp_path / 'no-model'} (a hub name is owner/name)"
    (tmp_path / "no-model").mkdir()  # a folder without a model
    proc = run_cli("train", "sft", "--config", str(config), env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "could not load causal LM" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_the_library_never_imports_the_trainer():
    """``searchr3-eval train`` finds the trainer by its entry point; importing every module of the library and running
    a command leaves ``trainer`` unimported."""
    code = ("import pkgutil, importlib, sys, searchr3_eval\n"
            "for m in pkgutil.walk_packages(searchr3_eval.__path__, 'searchr3_eval.'):\n"
            "    importlib.import_module(m.name)\n"
            "from searchr3_eval.cli import main\n"
            "main(['tasks'])\n"
            "print(sorted(m for m in sys.modules if m == 'trainer' or m.startswith('trainer.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
