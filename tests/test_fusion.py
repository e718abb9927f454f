"""Fused specs score like any model from their members' stored rankings, and agree with ranx's fusion."""

import pytest

from searchr3_eval.cli import main
from searchr3_eval.errors import UserError
from searchr3_eval.models import ModelOptions, describe, parse_model_specs
from searchr3_eval.report import table
from searchr3_eval.results import load_results, ranking_path, read_ranking, result_path


def run(data_dir, out, models, *extra):
    return main(["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", models, "--output-dir",
                 str(out), "--no-cache", "--quiet", "--dtype", "float32", "--max-length", "200", *extra])


def by_spec(out):
    return {r.model_spec: r for r in load_results(out)}


@pytest.mark.parametrize("method, ranx_args", [("rrf", {"method": "rrf", "params": {"k": 60}}),
                                               ("linear", {"norm": "min-max", "method": "wsum",
                                                           "params": {"weights": [0.3, 0.7]}})])
def test_a_fused_spec_is_scored_from_the_members_rankings_as_ranx_fuses_them(tiny_model_dir, data_dir, tmp_path,
                                                                             method, ranx_args):
    from ranx import Run, fuse

    out, dense = tmp_path / "r", f"basellm:{tiny_model_dir}"
    params = "" if method == "rrf" else ";w=0.3"
    assert run(data_dir, out, f"fusion:{method}(bm25,{dense}{params})") == 0
    results = by_spec(out)
    fused_spec = next(s for s in results if s.startswith("fusion:"))
    assert set(results) == {"bm25", dense, fused_spec}  # the members are scored (and shown) too
    members = [read_ranking(ranking_path(result_path(out, results[s].identity))) for s in ("bm25", dense)]
    expected = fuse([Run(m) for m in members], **ranx_args).to_dict()
    fused_ranking = read_ranking(ranking_path(result_path(out, results[fused_spec].identity)))
    for qid, docs in fused_ranking.items():  # the stored top 100 are ranx's scores, and ranx's best 100 scores
        assert docs == pytest.approx({d: expected[qid][d] for d in docs}, abs=1e-6)
        assert sorted(docs.values())[0] == pytest.approx(sorted(expected[qid].values(), reverse=True)[len(docs) - 1])
    assert len(table(load_results(out)).rows) == 3


def test_fusion_reuses_results_recomputes_members_without_rankings_and_keys_on_members(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert run(data_dir, out, "bm25") == 0
    ranking_path(result_path(out, by_spec(out)["bm25"].identity)).unlink()  # as a result written before rankings
    assert run(data_dir, out, "fusion:rrf(bm25,bm25;k=10)") == 0
    assert "skip bm25" not in capsys.readouterr().out  # redone, to have its ranking
    assert run(data_dir, out, "fusion:rrf(bm25,bm25;k=10)") == 0
    assert capsys.readouterr().out.count("skip") == 2
    (spec,) = [s for s in parse_model_specs("fusion:rrf(minilm,bm25)")]
    assert describe(spec, ModelOptions()) != describe(spec, ModelOptions(query_prompt="query: "))
    assert spec.text == "fusion:rrf(minilm,bm25;k=60)" and [m.text for m in spec.members] == ["minilm", "bm25"]


@pytest.mark.parametrize("spec, message", [("fusion:max(bm25,minilm)", "use fusion:rrf"),
                                           ("fusion:rrf(bm25)", "needs at least two members"),
                                           ("fusion:linear(bm25,minilm;w=0.2/0.3/0.5)", "2 non-negative weights"),
                                           ("fusion:rrf(bm25,minilm;k=0)", "k must be at least 1"),
                                           ("fusion:rrf(bm25,minilm", "unbalanced parentheses")])
def test_a_malformed_fusion_spec_is_one_error(spec, message):
    with pytest.raises(UserError, match=message):
        parse_model_specs(spec)
