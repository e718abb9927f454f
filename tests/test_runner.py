"""The library runner: tasks validated before models run, missing sets listed, faults caught before the work."""
import subprocess
import sys

import pytest

from searchr3_eval import evaluate
from searchr3_eval.errors import UserError
from searchr3_eval.models import ModelOptions, describe, load_model, parse_model_specs
from searchr3_eval.runner import check_writable
from tests.conftest import write_beir_folder

QUIET = ModelOptions(show_progress=False)


def test_missing_beir_sets_offline_run_the_rest_then_fail(data_dir, tmp_path):
    echoed = []
    with pytest.raises(UserError, match="no data for 2 task\\(s\\): SciFact, NFCorpus; the others were scored"):
        evaluate("bm25", "MiniGSM,SciFact,NFCorpus", tmp_path / "r", data_dir=data_dir, download=False, options=QUIET,
                 echo=echoed.append)
    assert len(list((tmp_path / "r" / "runs" / "bm25").glob("MiniGSM-*.json"))) == 1
    assert sum(line.startswith("missing ") for line in echoed) == 2
    summary = evaluate("bm25", "MiniGSM,SciFact", tmp_path / "r", data_dir=data_dir, download=False, options=QUIET,
                       skip_missing=True, echo=echoed.append)
    assert summary.missing_tasks == ["SciFact"] and len(summary.reused) == 1 and not summary.computed


def test_cli_exit_code_for_missing_sets(data_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "searchr3_eval.cli", "run", "--tasks", "MiniGSM,SciFact", "--models", "bm25",
                           "--data-dir", str(data_dir), "--offline", "--output-dir", str(tmp_path / "r"), "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("searchr3-eval: error: no data for 1 task(s): SciFact")
    assert "BM25 on MiniGSM" in proc.stdout


def test_tasks_are_validated_before_any_model_runs(data_dir, tmp_path):
    write_beir_folder(data_dir / "Broken", 10)
    (data_dir / "Broken" / "queries.jsonl").write_text('{"_id": "q0", "text": "a"}\n{"_id": "q0", "text": "b"}\n')
    with pytest.raises(UserError, match="duplicate query id 'q0'"):
        evaluate("bm25", "MiniGSM,Broken", tmp_path / "r", data_dir=data_dir, options=QUIET, echo=lambda _: None)
    assert not (tmp_path / "r" / "runs").exists()


def test_repeated_model_specs_run_once(data_dir, tmp_path):
    summary = evaluate("bm25, bm25,bm25", "MiniGSM,MiniGSM", tmp_path / "r", data_dir=data_dir, options=QUIET,
                       echo=lambda _: None)
    assert len(summary.computed) == 1
    assert [s.text for s in parse_model_specs("minilm,bm25,minilm")] == ["minilm", "bm25"]


def test_library_and_cli_share_defaults(data_dir, tmp_path):
    from searchr3_eval.commands import build_parser

    args = build_parser().parse_args(["run"])
    defaults = ModelOptions()
    assert (args.batch_size, args.max_length, args.max_new_tokens, args.dtype, args.prompts) == (
        defaults.batch_size, defaults.max_length, defaults.max_new_tokens, defaults.dtype, defaults.prompts)


def test_unwritable_or_full_output_folder_fails_first(data_dir, tmp_path):
    with pytest.raises(UserError, match="output folder /proc/searchr3-results is not writable"):
        evaluate("bm25", "MiniGSM", "/proc/searchr3-results", data_dir=data_dir, options=QUIET, echo=lambda _: None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cache folder .*file/cache is not writable"):
        evaluate("minilm", "MiniGSM", tmp_path / "r", data_dir=data_dir, options=QUIET, cache_dir=tmp_path / "file" / "cache",
                 echo=lambda _: None)
    assert not (tmp_path / "r" / "runs").exists()
    with pytest.raises(UserError, match=r"has only .* MiB free \(need"):
        check_writable(tmp_path, "output folder", min_free_bytes=1 << 60)


def test_corrupt_cache_names_the_file_and_bm25_never_opens_it(data_dir, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "embeddings.sqlite").write_bytes(b"this is not a database" * 100)
    summary = evaluate("bm25", "MiniGSM", tmp_path / "r", data_dir=data_dir, cache_dir=cache_dir, options=QUIET,
                       echo=lambda _: None)
    assert len(summary.computed) == 1
    proc = subprocess.run([sys.executable, "-m", "searchr3_eval.cli", "run", "--tasks", "MiniGSM", "--models", "minilm",
                           "--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "--output-dir", str(tmp_path / "r"),
                           "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"embedding cache {cache_dir / 'embeddings.sqlite'} cannot be used" in proc.stderr
    assert "move it aside or delete it to rebuild" in proc.stderr


@pytest.mark.parametrize("spec", ["bm25", "minilm", "searchr3:TINY", "basellm:TINY"])
def test_identity_known_before_loading_equals_the_loaded_model(spec, tiny_model_dir):
    (parsed,) = parse_model_specs(spec.replace("TINY", str(tiny_model_dir)))
    options = ModelOptions(show_progress=False, add_embed_token=True, prompts="instruct", max_length=200)
    identity = describe(parsed, options)
    model = load_model(parsed, options, cache=None)
    assert identity.settings == model.settings and identity.revision == model.revision


def test_device_is_checked_first_and_recorded(data_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU behaviour")
    with pytest.raises(UserError, match="--device cuda: no CUDA device is available here"):
        evaluate("bm25", "MiniGSM", tmp_path / "r", data_dir=data_dir, options=ModelOptions(device="cuda"),
                 echo=lambda _: None)
    with pytest.raises(UserError, match="unknown device 'gpu'"):
        ModelOptions(device="gpu").validate()
    summary = evaluate("bm25,minilm", "MiniGSM", tmp_path / "r", data_dir=data_dir, options=QUIET, echo=lambda _: None)
    assert [r.timing["device"] for r in summary.computed] == ["cpu", "cpu"]


def test_a_models_own_options_make_it_a_second_row_with_the_same_identity_as_the_flags(data_dir, tmp_path,
                                                                                        tiny_model_dir):
    """``searchr3:<model>[reasoning=on,...]`` beside ``searchr3:<model>`` scores both in one run; the bracketed row is
    the result ``--reasoning on`` gives (the same identity, so that run finds it and skips), and a bad option is a
    UserError before any model loads."""
    tiny = f"searchr3:{tiny_model_dir}"
    options = ModelOptions(show_progress=False, add_embed_token=True, max_length=160)
    summary = evaluate(f"{tiny},{tiny}[reasoning=on,max-new-tokens=4]", "MiniGSM", tmp_path / "r", data_dir=data_dir,
                       options=options, cache_dir=None)
    assert sorted(r.settings["reasoning"] for r in summary.computed) == ["off", "on"]
    on = next(r for r in summary.computed if r.settings["reasoning"] == "on")
    assert on.model_spec == tiny and on.settings["max_new_tokens"] == 4
    again = evaluate(tiny, "MiniGSM", tmp_path / "r", data_dir=data_dir, cache_dir=None,
                     options=ModelOptions(show_progress=False, add_embed_token=True, max_length=160, reasoning="on",
                                          max_new_tokens=4))
    assert not again.computed and [r.scores for r in again.reused] == [on.scores]
    for bad, message in ((f"{tiny}[reasoning=maybe]", "--reasoning must be off, on or all"),
                         (f"{tiny}[temperature=2]", "'temperature=2' is not key=value with a key among"),
                         ("bm25[reasoning=on]", "only embedding models take options of their own")):
        with pytest.raises(UserError, match=message):
            evaluate(bad, "MiniGSM", tmp_path / "bad", data_dir=data_dir, options=options, cache_dir=None)
