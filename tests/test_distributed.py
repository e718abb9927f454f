"""``torchrun`` with 2 CPU processes (gloo): each rank encodes a share, rank 0 scores; the scores equal 1 process's."""
import subprocess
import sys

from searchr3_eval.results import load_results


def run_cli(args: list[str], processes: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = (launcher if processes > 1 else [sys.executable]) + ["-m", "searchr3_eval.cli", "run", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_two_gloo_processes_score_like_one(data_dir, tmp_path, tiny_model_dir):
    common = ["--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", f"bm25,searchr3:{tiny_model_dir}",
              "--add-embed-token", "--dtype", "float32", "--batch-size", "8", "--reasoning", "on",
              "--max-new-tokens", "4", "--quiet"]
    two = run_cli([*common, "--output-dir", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "cache")], 2)
    assert two.returncode == 0, two.stderr[-2000:]
    one = run_cli([*common, "--output-dir", str(tmp_path / "one"), "--no-cache"], 1)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.stdout.count("nDCG@10") == 2  # rank 0 alone reports
    results = {(out, r.model_spec): r for out in ("one", "two") for r in load_results(tmp_path / out)}
    for spec in ("bm25", f"searchr3:{tiny_model_dir}"):
        assert results["two", spec].per_query == results["one", spec].per_query
    dense = results["two", f"searchr3:{tiny_model_dir}"]
    assert dense.timing["processes"] == 2 and dense.timing["docs_encoded"] == 40

    # rank 0 cached every rank's embeddings (and reasoning): a one-process re-run encodes nothing
    again = run_cli([*common, "--output-dir", str(tmp_path / "again"), "--cache-dir", str(tmp_path / "cache")], 1)
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = {r.model_spec: r for r in load_results(tmp_path / "again")}[f"searchr3:{tiny_model_dir}"]
    assert rerun.timing["docs_from_cache"] == 40 and rerun.timing["queries_from_cache"] == 40
    assert rerun.per_query == dense.per_query and rerun.scores == dense.scores
