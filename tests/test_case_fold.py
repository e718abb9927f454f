"""Letter-case folding: texts written in capitals are embedded as their lower-cased form, before the cache; a model's
manifest declares its default, the options override it, and only a fold that is on enters a result's identity."""
import json

import numpy as np
import pytest

from searchr3_eval.cache import EmbeddingCache
from searchr3_eval.cli import main
from searchr3_eval.errors import UserError
from searchr3_eval.models import ModelOptions, describe, parse_model_specs
from searchr3_eval.models.lm.locate import MANIFEST
from searchr3_eval.models.lm.prompt_format import fold_case
from searchr3_eval.models.searchr3 import SearchR3Encoder
from searchr3_eval.results import load_results


def test_only_texts_written_in_capitals_are_folded():
    shouted = "WHAT PROBLEMS AND CONCERNS ARE THERE IN MAKING UP DESCRIPTIVE TITLES?"
    assert fold_case(shouted, "all-caps") == shouted.lower()
    assert fold_case("EFFECT OF mRNA VACCINES ON COVID-19 OUTCOMES", "all-caps").startswith("effect of mrna")
    assert fold_case("BPA IN CANS", "all-caps") == "bpa in cans"
    for text in ("DNA repair in E. coli under UV light", "What is BRCA1?", "ADHD", "IGF-1", "HIV AIDS",
                 "1,460 + 35 = 1,495", ""):
        assert fold_case(text, "all-caps") == text
    assert fold_case(shouted, "off") == shouted


def test_the_sentence_fold_writes_capitals_in_sentence_case():
    shouted = '"WHAT IS DONE? IT IS DONE BY E.G. 3.5 UNITS."  (NEXT ONE) IS HERE! SEE RESULTS'
    assert fold_case(shouted, "all-caps-sentence") == '"What is done? It is done by e.g. 3.5 units."  (Next one) is here! See results'
    assert fold_case(shouted, "all-caps-sentence").lower() == fold_case(shouted, "all-caps")
    for text in ("DNA repair in E. coli under UV light", "What is BRCA1?", "HIV AIDS"):
        assert fold_case(text, "all-caps-sentence") == text


def test_a_folded_text_is_embedded_and_cached_as_the_text_it_becomes(tiny_model_dir, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    common = {"add_token": True, "show_progress": False, "cache": cache}
    plain = SearchR3Encoder.from_pretrained(str(tiny_model_dir), **common)
    folding = SearchR3Encoder.from_pretrained(str(tiny_model_dir), case_fold="all-caps", **common)
    texts = ["HOW MANY BOLTS IN TOTAL DOES IT TAKE?", "How many meters does he run a week?"]
    lowered = [texts[0].lower(), texts[1]]
    expected = plain.encode(lowered, "query")
    assert not np.allclose(plain.encode(texts, "query")[0], expected[0])  # the model reads case
    assert folding.cache_key("query") == plain.cache_key("query")
    np.testing.assert_array_equal(folding.encode(texts, "query"), expected)
    assert folding.last_stats.cached == 2  # both were found under the texts they became
    assert "case_fold" not in plain.settings and folding.settings["case_fold"] == "all-caps"
    with pytest.raises(UserError, match="--case-fold must be one of off, all-caps, all-caps-sentence"):
        SearchR3Encoder.from_pretrained(str(tiny_model_dir), case_fold="lower", **common)


def test_a_models_manifest_declares_its_fold_and_the_options_override_it(tiny_model_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / MANIFEST).write_text(json.dumps({"base": str(tiny_model_dir), "base_vocab_size": 1,
                                                "case_fold": "all-caps"}), encoding="utf-8")
    [spec] = parse_model_specs(f"searchr3:{adapter}")
    assert describe(spec, ModelOptions()).settings["case_fold"] == "all-caps"
    assert "case_fold" not in describe(spec, ModelOptions(case_fold="off")).settings
    [base] = parse_model_specs(f"searchr3:{tiny_model_dir}")
    assert "case_fold" not in describe(base, ModelOptions()).settings


def test_with_the_fold_a_task_with_its_queries_in_capitals_scores_as_one_with_them_lower_cased(tiny_model_dir,
                                                                                                data_dir, tmp_path):
    source = data_dir / "MiniGSM"
    for variant, change in (("Upper", str.upper), ("Lower", str.lower)):
        folder = data_dir / f"MiniGSM{variant}"
        (folder / "qrels").mkdir(parents=True)
        (folder / "qrels" / "test.tsv").write_bytes((source / "qrels" / "test.tsv").read_bytes())
        (folder / "corpus.jsonl").write_bytes((source / "corpus.jsonl").read_bytes())
        rows = [json.loads(line) for line in (source / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
        (folder / "queries.jsonl").write_text("".join(json.dumps({**r, "text": change(r["text"])}) + "\n"
                                                      for r in rows), encoding="utf-8")
    args = ["run", "--tasks", "MiniGSMUpper,MiniGSMLower", "--data-dir", str(data_dir), "--models",
            f"searchr3:{tiny_model_dir}", "--add-embed-token", "--output-dir", str(tmp_path / "r"), "--quiet",
            "--cache-dir", str(tmp_path / "cache"), "--max-length", "256"]
    assert main(args) == 0 and main([*args, "--case-fold", "all-caps"]) == 0
    scores = {(r.task, r.settings.get("case_fold", "off")): r.per_query["ndcg_at_10"]
              for r in load_results(tmp_path / "r")}
    assert scores[("MiniGSMUpper", "all-caps")] == scores[("MiniGSMLower", "all-caps")] == scores[("MiniGSMLower", "off")]
    assert scores[("MiniGSMUpper", "off")] != scores[("MiniGSMLower", "off")]
