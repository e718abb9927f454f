import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from searchr3_eval.data import load_task
from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.generate import TransformersGenerator
from searchr3_eval.models.lm.prompt_format import fold_case
from searchr3_eval.models.searchr3 import SearchR3Encoder
from trainer.config import LossWeights, RLConfig, SFTConfig, load_config
from trainer.data import Triple, load_triples, mine_bm25_triples, write_triples
from trainer.environment import RetrievalEnvironment, overlap_at_k
from trainer.losses import info_nce, triplet
from trainer.modeling import Policy
from trainer.rl import RetrievalGRPO
from trainer.sft import heldout_infonce, train_sft

WORDS = ["apple", "river", "violin", "carbon", "tiger", "pencil", "harbor", "planet", "candle", "garden",
         "silver", "monkey", "winter", "rocket", "bridge", "forest"]
FILLERS = ["some notes", "a short page", "an old text", "the report", "a small story", "more lines"]


def keyword_triples(seed: int, n: int) -> list[Triple]:
    """Toy pairs: a query names a word, its positive mentions the word in random filler, negatives other words."""
    rng = random.Random(seed)
    triples = []
    for _ in range(n):
        word, other = rng.sample(WORDS, 2)
        filler = rng.choice(FILLERS)
        triples.append(Triple(f"find {word}", f"{filler} about {word} here", [f"{filler} about {other} here"]))
    return triples


def test_losses_prefer_the_right_document():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    good = info_nce(q, q.clone(), None, 0.1)
    bad = info_nce(q, q.flip(0), None, 0.1)
    assert good < 0.01 < bad
    assert triplet(q, q, q.flip(0)[:, None, :], 0.2) == 0
    assert triplet(q, q.flip(0), q[:, None, :], 0.2) == pytest.approx(1.2)


def test_triples_file_errors_and_roundtrip(tmp_path):
    path = tmp_path / "t.jsonl"
    write_triples(path, keyword_triples(0, 3))
    assert load_triples(path) == keyword_triples(0, 3)
    path.write_text('{"query": "x"}\n')
    with pytest.raises(UserError, match="line 1"):
        load_triples(path)


def test_config_rejects_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\noutput_dir: o\nweights: {sft: 0.5}\n")
    assert load_config(path, SFTConfig).weights == LossWeights(sft=0.5)
    path.write_text("model: m\noutput_dir: o\nlearnig_rate: 1\n")
    with pytest.raises(UserError, match="learnig_rate"):
        load_config(path, SFTConfig)


def test_bm25_mined_negatives_are_not_judged_relevant(data_dir):
    from searchr3_eval.data import load_beir_folder

    task = load_beir_folder(data_dir / "MiniGSM")
    triples = mine_bm25_triples(task, num_negatives=2)
    assert len(triples) == 40
    for t, qid in zip(triples, task.qrels):
        assert t.positive == task.corpus[f"d{qid[1:]}"]["text"] and t.positive not in t.negatives
        assert len(t.negatives) == 2


def test_sft_lowers_heldout_contrastive_loss_and_resumes(tiny_model_dir, tmp_path):
    train, heldout = keyword_triples(1, 96), keyword_triples(2, 32)
    write_triples(tmp_path / "train.jsonl", train)
    write_triples(tmp_path / "heldout.jsonl", heldout)
    cfg = SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "out"), train_file=str(tmp_path / "train.jsonl"),
                    eval_file=str(tmp_path / "heldout.jsonl"),
                    learning_rate=1e-2, batch_size=16, max_steps=30, save_every=10, temperature=0.1, max_length=160,
                    mixed_precision="no")
    before = heldout_infonce(Policy(str(tiny_model_dir), max_length=160), heldout, 0.1)
    summary = train_sft(cfg, show_progress=False)
    trained = SearchR3Encoder.from_pretrained(summary["model"], max_length=160, show_progress=False)
    policy = Policy(summary["model"], max_length=160)
    after = heldout_infonce(policy, heldout, 0.1)
    assert after < before - 0.3, (before, after)
    assert summary["heldout_infonce"]["at_start"] == pytest.approx(before, abs=1e-4)
    assert summary["heldout_infonce"]["best"] == pytest.approx(after, abs=1e-4)  # final is the best checkpoint
    np.testing.assert_allclose(trained.encode(["find apple"], "query"), policy.embed(["find apple"], "query").numpy(), atol=1e-5)
    rows = (tmp_path / "out" / "loss_log.csv").read_text().splitlines()
    assert len(rows) == 31 and (tmp_path / "out" / "loss_plot.png").exists()

    cfg.max_steps = 32  # resuming continues from the checkpoint at step 30
    train_sft(cfg, show_progress=False)
    assert len((tmp_path / "out" / "loss_log.csv").read_text().splitlines()) == 33


def test_sft_schedule_and_clipping_are_logged_resume_exactly_and_an_edited_config_is_refused(tiny_model_dir, tmp_path,
                                                                                             monkeypatch):
    import trainer.sft as sft

    write_triples(tmp_path / "train.jsonl", keyword_triples(1, 64))

    def config(out: str, **changes) -> SFTConfig:
        return SFTConfig(**{**dict(model=str(tiny_model_dir), output_dir=str(tmp_path / out), train_file=str(tmp_path / "train.jsonl"),
                         learning_rate=1e-2, batch_size=16, max_steps=10, save_every=5, temperature=0.1, max_length=160,
                         mixed_precision="no", lr_schedule="cosine", warmup_steps=3, max_grad_norm=0.5), **changes})

    def log(out: str) -> list[dict]:
        return list(csv.DictReader(open(tmp_path / out / "loss_log.csv")))

    train_sft(config("whole"), show_progress=False)
    rows = log("whole")
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[:4] == pytest.approx([0.0, 1e-2 / 3, 2e-2 / 3, 1e-2]) and 0 < lrs[-1] < lrs[4] < 1e-2
    assert all(float(r["grad_norm"]) > 0 for r in rows) and max(float(r["grad_norm"]) for r in rows) > 0.5  # pre-clip
    calls, real = [], sft.clip_and_step

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(sft, "clip_and_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_sft(config("resumed"), show_progress=False)
    monkeypatch.setattr(sft, "clip_and_step", real)
    train_sft(config("resumed"), show_progress=False)  # from the step-5 checkpoint
    assert [r["total"] for r in log("resumed")] == pytest.approx([r["total"] for r in rows], rel=1e-5)
    assert [r["lr"] for r in log("resumed")] == [r["lr"] for r in rows]
    with pytest.raises(UserError, match=r"written with another config \(learning_rate: 0.01 -> 0.02\)"):
        train_sft(config("resumed", learning_rate=2e-2, max_steps=12), show_progress=False)
    train_sft(config("resumed", max_steps=12), show_progress=False)  # a longer run may resume
    assert len(log("resumed")) == 12


def test_a_checkpoint_from_before_a_setting_existed_resumes_only_at_its_default(tmp_path):
    from dataclasses import replace

    from trainer.optim import check_resumed_config, config_state

    cfg = SFTConfig(model="m", output_dir=str(tmp_path))
    older = {k: v for k, v in config_state(cfg).items() if k != "mask_judged"}  # written before mask_judged existed
    check_resumed_config(older, cfg, "checkpoint")
    with pytest.raises(UserError, match=r"another config \(mask_judged: False -> True\)"):
        check_resumed_config(older, replace(cfg, mask_judged=True), "checkpoint")


def test_a_continuation_with_skip_batches_trains_on_the_rest_of_the_epoch(tiny_model_dir, tmp_path, monkeypatch):
    import trainer.sft as sft

    triples = keyword_triples(1, 64)
    for i, t in enumerate(triples):  # distinct queries, so each batch is recognisable
        t.query = f"{t.query} {i}"
    write_triples(tmp_path / "train.jsonl", triples)
    seen, real = [], sft.sft_losses

    def recording(policy, batch, *args):
        seen.append([t.query for t in batch])
        return real(policy, batch, *args)

    monkeypatch.setattr(sft, "sft_losses", recording)
    common = dict(train_file=str(tmp_path / "train.jsonl"), learning_rate=1e-2, batch_size=16, temperature=0.1,
                  max_length=160, mixed_precision="no", seed=3)
    first = train_sft(SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "first"), max_steps=1, **common),
                      show_progress=False)
    rest = SFTConfig(model=first["model"], output_dir=str(tmp_path / "rest"), skip_batches=1, **common)
    assert train_sft(rest, show_progress=False)["steps"] == 3  # the epoch's 4 batches less the 1 trained
    queries = [q for batch in seen for q in batch]
    assert sorted(queries) == sorted(t.query for t in triples)  # every triple once, none twice
    with pytest.raises(UserError, match="skip_batches 4 leaves no batch of the 1 epoch"):
        train_sft(SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "none"), skip_batches=4, **common),
                  show_progress=False)


def test_sft_resumes_a_checkpoint_written_before_checkpoints_were_gathered(tiny_model_dir, tmp_path):
    """A checkpoint of ``state_dict()``s (optimiser state by position) resumes with its weights and optimiser state."""
    write_triples(tmp_path / "train.jsonl", keyword_triples(1, 32))
    cfg = SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "out"), train_file=str(tmp_path / "train.jsonl"),
                    batch_size=8, max_steps=2, learning_rate=1e-2, max_length=160, mixed_precision="no")
    train_sft(cfg, show_progress=False)
    policy = Policy(str(tmp_path / "out" / "final"), max_length=160)
    optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=1e-2)
    new = torch.load(tmp_path / "out" / "checkpoint" / "state.pt", weights_only=False)
    policy.model.load_state_dict(new["model"], strict=False)  # the trained parameters; the rest is the model's
    for p, state in zip(optimizer.param_groups[0]["params"], new["optimizer"]["state"].values()):
        optimizer.state[p] = state
    torch.save({"model": policy.model.state_dict(), "optimizer": optimizer.state_dict(), "step": 2},
               tmp_path / "out" / "checkpoint" / "state.pt")
    uninterrupted = SFTConfig(**{**cfg.__dict__, "output_dir": str(tmp_path / "straight"), "max_steps": 4})
    train_sft(uninterrupted, show_progress=False)
    cfg.max_steps = 4
    train_sft(cfg, show_progress=False)
    resumed, straight = (list(csv.DictReader(open(tmp_path / d / "loss_log.csv"))) for d in ("out", "straight"))
    for step in (2, 3):  # step 4's loss follows step 3's update, which used the restored optimiser state
        assert float(resumed[step]["total"]) == pytest.approx(float(straight[step]["total"]), rel=1e-5)


def test_a_diverging_loss_stops_sft_before_it_reaches_the_weights(tiny_model_dir, tmp_path):
    write_triples(tmp_path / "train.jsonl", keyword_triples(1, 32))
    cfg = SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "out"), train_file=str(tmp_path / "train.jsonl"),
                    learning_rate=1e12, batch_size=16, max_steps=6, max_length=160, mixed_precision="no")
    with pytest.raises(UserError, match=r"sft step [2-6]: the loss is (nan|inf)"):
        train_sft(cfg, show_progress=False)


def greedy_analyses(policy: Policy, queries: list[str]) -> list[str]:
    """What the evaluation's reasoning mode generates for ``queries`` (greedy, up to the embed token)."""
    return TransformersGenerator(policy.model, policy.tokenizer, policy.embed_id, policy.format.prompts.direct_answer)(
        policy.format.generation_prompts(queries, "query"), 16)


def test_reasoning_sft_teaches_an_analysis_before_the_embed_token(tiny_model_dir, tmp_path):
    """Triples with an analysis (here the query's topic word) are also trained in reasoning format. Afterwards, on
    unseen queries, the reasoning answers ("<topic>. The embedding is <|embed_token|>") are far more likely than under
    direct-only SFT on the same data, and greedy generation writes something before the direct phrase, where the
    direct model answers "The embedding is" at once (this tiny model is too weak to copy the topic reliably)."""
    def with_topic(triples):
        return [Triple(t.query, t.positive, t.negatives, t.query.split()[-1]) for t in triples]

    write_triples(tmp_path / "train.jsonl", with_topic(keyword_triples(1, 96)))
    unseen = with_topic(keyword_triples(2, 8))
    base = dict(model=str(tiny_model_dir), train_file=str(tmp_path / "train.jsonl"), learning_rate=1e-2, batch_size=16,
                max_steps=60, temperature=0.1, max_length=160, mixed_precision="no")
    direct = Policy(train_sft(SFTConfig(output_dir=str(tmp_path / "direct"), **base), show_progress=False)["model"],
                    max_length=160)
    reasoned = Policy(train_sft(SFTConfig(output_dir=str(tmp_path / "reasoning"), reasoning=True, **base),
                                show_progress=False)["model"], max_length=160)

    def answer_loss(policy: Policy) -> float:
        sequences, answers = policy.reasoning_sequences([t.query for t in unseen], [t.analysis for t in unseen], "query")
        with torch.no_grad():
            _, logprobs, targets = policy.answer_forward(sequences, answers)
        return -logprobs.gather(1, targets[:, None]).mean().item()

    assert answer_loss(reasoned) < answer_loss(direct) / 2
    direct_generations = greedy_analyses(direct, [t.query for t in unseen])
    assert all(analysis.startswith("The embedding is") for analysis in direct_generations), direct_generations
    generations = greedy_analyses(reasoned, [t.query for t in unseen])
    assert not any(analysis.startswith("The embedding is") for analysis in generations), generations


def test_environment_partial_refresh_tracks_a_fresh_index():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 8)).astype(np.float32)
    drift = {"scale": 0.0}

    def encode(texts):
        rows = np.array([int(t) for t in texts])
        vectors = base[rows] + drift["scale"] * np.sin(base[rows] * 3)
        return torch.tensor(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))

    env = RetrievalEnvironment([f"d{i}" for i in range(50)], [str(i) for i in range(50)], encode, top_k=5, refresh_every=10)
    drift["scale"] = 0.5  # the policy changed
    queries = encode([str(i) for i in range(5)]).numpy()
    stats = env.refresh_for_batch(queries, ["d0", "d1", "d2", "d3", "d4"])
    assert 5 <= stats.documents < 50
    fresh = RetrievalEnvironment(env.doc_ids, env.doc_texts, encode, top_k=5)
    assert overlap_at_k(env.rankings(queries, 5), fresh.rankings(queries, 5)) == 1.0
    assert list(env.ranks(queries, ["d0", "d1", "d2", "d3", "d4"])) == [1, 1, 1, 1, 1]


def test_rank_band_refresh_gives_the_positives_rank_in_a_fresh_index():
    """A reward is the positive's rank: re-encoding the documents that score near the positive (its rank band, fixed
    or measured from the score drift of the round-robin slice) makes that rank the fresh index's, while refreshing the
    top-k candidates and the slice alone leaves stale documents that cross it."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2000, 32)).astype(np.float32)
    shift = rng.normal(size=(2000, 32)).astype(np.float32)
    drift = {"scale": 0.0}

    def encode(texts):
        rows = np.array([int(t) for t in texts])
        vectors = base[rows] + drift["scale"] * shift[rows]
        return torch.tensor(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))

    ids, texts, positives = [f"d{i}" for i in range(2000)], [str(i) for i in range(2000)], [f"d{i}" for i in range(16)]
    queries = base[:16] + 2.0 * rng.normal(size=(16, 32)).astype(np.float32)  # positives at ranks 1 to ~450
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    wrong, refreshed = {}, {}
    for band in ({"rank_band": 0.0}, {"rank_band": 0.06}, {"drift_band": 1.0}):
        drift["scale"] = 0.0
        env = RetrievalEnvironment(ids, texts, encode, top_k=5, refresh_every=20, **band)
        env.cursor = 100  # the slice is not the positives
        drift["scale"] = 0.1  # the policy changed
        name = next(f"{k}={v}" for k, v in band.items())
        refreshed[name] = env.refresh_for_batch(queries, positives).documents
        fresh = RetrievalEnvironment(ids, texts, encode, top_k=5)
        wrong[name] = int((env.ranks(queries, positives) != fresh.ranks(queries, positives)).sum())
    assert wrong == {"rank_band=0.0": wrong["rank_band=0.0"], "rank_band=0.06": 0, "drift_band=1.0": 0}
    assert wrong["rank_band=0.0"] >= 3
    assert refreshed["rank_band=0.0"] < min(refreshed["rank_band=0.06"], refreshed["drift_band=1.0"])
    assert max(refreshed.values()) < 1000


@pytest.mark.parametrize("kl_beta, ppo_epochs, forwards", [(0.0, 1, 1), (0.02, 1, 2), (0.0, 2, 3), (0.02, 2, 4)])
def test_grpo_update_skips_the_reference_and_old_forwards_it_does_not_need(tiny_model_dir, tmp_path, kl_beta,
                                                                           ppo_epochs, forwards):
    triples = [Triple(f"query {i} about eggs", f"document {i} about eggs and ducks", []) for i in range(4)]
    cfg = RLConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "rl"), group_size=2, max_new_tokens=4,
                   max_length=200, kl_beta=kl_beta, ppo_epochs=ppo_epochs, mixed_precision="no")
    trainer = RetrievalGRPO(cfg, triples)
    rollouts = trainer.rollout([t.query for t in triples[:2]], cfg.group_size, torch.Generator().manual_seed(0))
    calls = []
    forward = trainer.policy.forward
    trainer.policy.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
    update = trainer.update(rollouts, np.array([1.0, 0.0, 0.5, 0.25]))
    assert len(calls) == forwards and np.isfinite(update["loss"])
    assert (update["kl"] > 0) == (kl_beta > 0 and ppo_epochs > 1)  # the first epoch's policy is the reference


def test_bare_penalty_is_taken_only_from_answers_without_an_analysis(tiny_model_dir, tmp_path):
    triples = keyword_triples(2, 8)
    cfg = RLConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "rl"), group_size=2, max_new_tokens=8,
                   format_reward=0.0, bare_penalty=0.3, max_length=200, kl_beta=0.0, mixed_precision="no")
    trainer = RetrievalGRPO(cfg, triples)
    rollouts = trainer.rollout([t.query for t in triples[:2]], cfg.group_size, torch.Generator().manual_seed(0))
    tokenizer = trainer.policy.tokenizer
    rollouts.actions = [tokenizer.encode(text, add_special_tokens=False) for text in
                        ["The embedding is", "Relevant paper: The embedding is", "keywords apple", "Keywords: pear. The embedding is"]]
    rewards, reciprocal = trainer.rewards(rollouts, [p for p in trainer.positive_ids[:2] for _ in range(cfg.group_size)])
    np.testing.assert_allclose(reciprocal - rewards, [0.3, 0.3, 0.0, 0.0])


def test_a_direct_share_rewards_the_mix_of_each_rollout_with_its_querys_direct_embedding(tiny_model_dir, tmp_path):
    from searchr3_eval.models.base import l2_normalize

    triples = keyword_triples(2, 8)
    cfg = RLConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "rl"), group_size=2, max_new_tokens=8,
                   max_length=200, kl_beta=0.0, mixed_precision="no", reasoning_direct_weight=0.25, embedding_weight=1.0)
    trainer = RetrievalGRPO(cfg, triples)
    queries = [t.query for t in triples[:2]]
    rollouts = trainer.rollout(queries, cfg.group_size, torch.Generator().manual_seed(0))
    with torch.no_grad():
        reasoned = trainer.policy.forward(rollouts.sequences, keep_lower=False).embeddings.numpy()
        direct = np.repeat(trainer.policy.embed(queries, "query").numpy(), cfg.group_size, axis=0)
    np.testing.assert_allclose(rollouts.embeddings, l2_normalize(0.75 * reasoned + 0.25 * direct), atol=1e-5)
    positives = [p for p in trainer.positive_ids[:2] for _ in range(cfg.group_size)]
    np.testing.assert_array_equal(trainer.rewards(rollouts, positives)[1], 1.0 / trainer.env.ranks(rollouts.embeddings, positives))
    assert np.isfinite(trainer.update(rollouts, np.array([1.0, 0.0, 0.5, 0.25]), positives)["loss"])


def test_grpo_update_favours_the_rollouts_that_rank_the_positive_higher(tiny_model_dir, tmp_path):
    """With the format reward off the reward is the positive's reciprocal rank alone; one GRPO update must raise the
    log-probability of the rollouts whose embeddings ranked the positive above their group's mean, and lower the rest.
    (An end-to-end "retrieval improves in N steps" check on the tiny random model depends on the sampling seed: over
    four seeds 30 steps moved the mean reciprocal rank by -0.08 to +0.05, so it is not a test.)"""
    triples = keyword_triples(3, 8)
    cfg = RLConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "rl"), group_size=8, max_new_tokens=12,
                   learning_rate=1e-3, format_reward=0.0, max_length=200, kl_beta=0.0, mixed_precision="no")
    trainer = RetrievalGRPO(cfg, triples)
    rollouts = trainer.rollout([t.query for t in triples[:4]], cfg.group_size, torch.Generator().manual_seed(0))
    rewards, reciprocal = trainer.rewards(rollouts, [p for p in trainer.positive_ids[:4] for _ in range(cfg.group_size)])
    np.testing.assert_array_equal(rewards, reciprocal)  # nothing from the format reward
    with torch.no_grad():
        before = trainer.action_logprobs(rollouts, trainer.policy.model)[0].sum(1)
    trainer.update(rollouts, rewards)
    with torch.no_grad():
        change = (trainer.action_logprobs(rollouts, trainer.policy.model)[0].sum(1) - before).numpy()
    grouped = rewards.reshape(4, cfg.group_size)
    advantage = (grouped - grouped.mean(1, keepdims=True)).reshape(-1)
    informative = advantage != 0
    assert informative.sum() >= 8
    assert np.corrcoef(advantage[informative], change[informative])[0, 1] > 0.5
    assert change[advantage > 0].mean() > 0 > change[advantage < 0].mean()


def test_config_values_are_type_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\noutput_dir: o\nlearning_rate: 1e-4\nweights: {kl: 0}\nmax_steps: null\n")
    cfg = load_config(path, SFTConfig)
    assert cfg.learning_rate == 1e-4 and isinstance(cfg.learning_rate, float) and cfg.weights.kl == 0.0
    for bad, message in [("batch_size: eight", "batch_size must be int, not 'eight'"), ("lora: 'yes'", "lora must be bool"),
                         ("weights: {kl: lots}", "weights.kl must be float"), ("grad_accum: 0", "grad_accum must be at least 1"),
                         ("learning_rate: -1.0", "learning_rate must be greater than 0, not -1.0"),
                         ("temperature: 0", "temperature must be greater than 0, not 0.0"),
                         ("weights: {kl: -0.5}", "weights.kl must be at least 0"),
                         ("lr_schedule: step", "lr_schedule must be one of constant, linear, cosine"),
                         ("max_grad_norm: 0", "max_grad_norm must be greater than 0")]:
        path.write_text(f"model: m\noutput_dir: o\n{bad}\n")
        with pytest.raises(UserError, match=f"{path}: {message}"):
            load_config(path, SFTConfig)


def test_fast_training_path_matches_the_plain_loss(tiny_model_dir):
    from trainer.sft import sft_losses

    batch = keyword_triples(5, 8)
    cfg = SFTConfig(model=str(tiny_model_dir), output_dir="unused", temperature=0.1, max_length=160)
    torch.manual_seed(0)
    plain = Policy(str(tiny_model_dir), max_length=160, mixed_precision="no", attn_implementation="sdpa")
    torch.manual_seed(0)
    fast = Policy(str(tiny_model_dir), max_length=160, mixed_precision="bf16", attn_implementation="eager")
    assert fast.bf16_autocast and not plain.bf16_autocast
    plain_terms, plain_tokens = sft_losses(plain, batch, cfg)
    fast_terms, fast_tokens = sft_losses(fast, batch, cfg)
    assert plain_tokens == fast_tokens
    for name in ("sft", "infonce", "triplet", "total"):
        assert fast_terms[name].item() == pytest.approx(plain_terms[name].item(), rel=0.03, abs=0.01), name
    fast_terms["total"].backward()  # gradients flow through the bf16 autocast path
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fast.model.parameters())


def test_kl_reference_is_skipped_when_its_weight_is_zero(tiny_model_dir):
    from trainer.sft import sft_losses

    cfg = SFTConfig(model=str(tiny_model_dir), output_dir="unused", max_length=160, weights=LossWeights(kl=0.0))
    policy = Policy(str(tiny_model_dir), max_length=160)
    calls = []
    original = policy.reference_model
    policy.reference_model = lambda: calls.append(1) or original()
    terms, _ = sft_losses(policy, keyword_triples(6, 4), cfg)
    assert calls == [] and terms["kl"].item() == 0.0
    cfg.weights = LossWeights(kl=0.1)
    sft_losses(policy, keyword_triples(6, 4), cfg)
    assert calls == [1]


def test_a_reasoning_answer_starts_with_the_analysis_lead_and_trains_it(tiny_model_dir):
    policy = Policy(str(tiny_model_dir), max_length=200, max_new_tokens=64)
    for lead in ("", "Relevant paper: "):
        (sequence,), (answer,) = policy.reasoning_sequences(["is the sky blue"], ["Rayleigh scattering"], "query",
                                                            lead=lead)
        trained = policy.tokenizer.decode(sequence[-answer:])
        assert trained == f"{lead}Rayleigh scattering. The embedding is <|embed_token|>", trained


def test_per_role_length_caps(tiny_model_dir):
    policy = Policy(str(tiny_model_dir), max_length=200)
    long_text = " ".join(["apple river violin carbon"] * 40)
    (short,), _ = policy.direct_sequences([long_text], "document", max_length=60)
    (full,), _ = policy.direct_sequences([long_text], "document")
    assert len(short) <= 60 < len(full) <= 200 and short[-1] == full[-1] == policy.embed_id


def test_shipped_configs_load_and_point_at_the_shared_data(shared_beir):
    from pathlib import Path

    from trainer.config import DataConfig

    root = Path(__file__).resolve().parents[1]
    data = load_config(root / "trainer/configs/data_smollm2.yaml", DataConfig)
    sft = load_config(root / "trainer/configs/sft_smollm2.yaml", SFTConfig)
    rl = load_config(root / "trainer/configs/rl_smollm2.yaml", RLConfig)
    assert all((root / d / "qrels" / f"{data.beir_split}.tsv").is_file() for d in data.beir_dirs)
    assert all((root / f).is_file() for f in data.pair_files) and data.pair_files
    assert data.beir_split != "test" and "TEST" not in data.keep_splits and not any("test" in f for f in data.pair_files)
    assert sft.train_file == str(Path(data.output_dir) / "train.jsonl")
    assert sft.eval_file == str(Path(data.output_dir) / "heldout.jsonl")
    assert (root / rl.beir_dir / "qrels" / f"{rl.beir_split}.tsv").is_file() and rl.beir_split != "test"
    assert rl.model == str(Path(sft.output_dir) / "final") and rl.train_layers == sft.train_layers
    reasoning_data = load_config(root / "trainer/configs/data_reasoning_smollm2.yaml", DataConfig)
    assert reasoning_data.beir_split != "test" and reasoning_data.beir_dirs
    for name, preset in [("sft_reasoning_smollm2", None), ("sft_reasoning_instruct_smollm2", "instruct")]:
        stage = load_config(root / f"trainer/configs/{name}.yaml", SFTConfig)
        assert stage.reasoning and stage.prompts == preset and (root / stage.model / "searchr3_adapter.json").is_file()
        assert stage.train_file == str(Path(reasoning_data.output_dir) / "train.jsonl")
    rl_reasoning = load_config(root / "trainer/configs/rl_reasoning_smollm2.yaml", RLConfig)
    assert rl_reasoning.model == "runs/sft-reasoning-smollm2/final" and rl_reasoning.beir_split != "test"
    nf_data = load_config(root / "trainer/configs/data_nfcorpus_smollm2.yaml", DataConfig)
    nf_sft = load_config(root / "trainer/configs/sft_nfcorpus_smollm2.yaml", SFTConfig)
    assert nf_data.beir_split == "train" and any(d.endswith("nfcorpus") for d in nf_data.beir_dirs)
    assert all((root / d / "qrels" / "train.tsv").is_file() for d in nf_data.beir_dirs)
    assert nf_sft.train_file == str(Path(nf_data.output_dir) / "train.jsonl")
    assert nf_sft.eval_file == str(Path(nf_data.output_dir) / "heldout.jsonl")
    distill = load_config(root / "trainer/configs/sft_distill_smollm2.yaml", SFTConfig)
    assert distill.train_file == nf_sft.train_file and distill.eval_file == nf_sft.eval_file
    assert distill.weights.distill > 0 and distill.teacher == "minilm"
    assert (root / distill.model / "searchr3_adapter.json").is_file()  # it continues the packaged smollm2-sft
    more = load_config(root / "trainer/configs/sft_distill_more_smollm2.yaml", SFTConfig)
    assert more.model == "searchr3_eval/weights/smollm2-sft-distill" and (root / more.model / "searchr3_adapter.json").is_file()
    # the continuation trains on the batches after those of the run that made its starting weights
    assert (more.train_file, more.seed, more.batch_size) == (distill.train_file, distill.seed, distill.batch_size)
    assert more.skip_batches == distill.max_steps * distill.grad_accum and more.train_layers == distill.train_layers


def test_trainer_device_is_validated_with_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\noutput_dir: o\ndevice: tpu\n")
    with pytest.raises(UserError, match=f"{path}: unknown device 'tpu'"):
        load_config(path, SFTConfig)


def test_top_layer_lora_with_cached_lower_layers_matches_the_full_forward(tiny_model_dir):
    from trainer.sft import sft_losses

    batch = keyword_triples(5, 8)
    cfg = SFTConfig(model=str(tiny_model_dir), output_dir="unused", temperature=0.1, max_length=160)
    full = Policy(str(tiny_model_dir), max_length=160, mixed_precision="no", lora=True)
    top = Policy(str(tiny_model_dir), max_length=160, mixed_precision="no", lora=True, train_layers=1)
    assert top.frozen_layers == 1 and full.lower_cache is None
    full_terms, _ = sft_losses(full, batch, cfg)
    top_terms, _ = sft_losses(top, batch, cfg)
    for name in ("sft", "infonce", "triplet", "total"):  # LoRA starts as the identity: same model, same losses
        assert top_terms[name].item() == pytest.approx(full_terms[name].item(), rel=1e-4), name
    top_terms["total"].backward()
    trained = [n for n, p in top.model.named_parameters() if p.grad is not None]
    assert trained and all("lora_" in n and ".layers.1." in n for n in trained)
    cached = len(top.lower_cache.states)
    sft_losses(top, batch, cfg)  # the same texts again: nothing new to compute
    assert cached == len(top.lower_cache.states) == len({t for x in batch for t in (x.query, x.positive, *x.negatives)})
    with pytest.raises(UserError, match="train_layers 3 is more than"):
        Policy(str(tiny_model_dir), train_layers=3)


def test_lora_sft_saves_a_small_adapter_that_the_evaluator_loads(tiny_model_dir, tmp_path):
    from searchr3_eval.models.lm.locate import is_adapter

    write_triples(tmp_path / "train.jsonl", keyword_triples(1, 96))
    write_triples(tmp_path / "heldout.jsonl", keyword_triples(2, 32))
    cfg = SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "out"), train_file=str(tmp_path / "train.jsonl"),
                    eval_file=str(tmp_path / "heldout.jsonl"), lora=True, lora_r=4, train_layers=1, learning_rate=1e-2,
                    batch_size=16, max_steps=20, eval_every=5, temperature=0.1, max_length=160, mixed_precision="no")
    summary = train_sft(cfg, show_progress=False)
    final = tmp_path / "out" / "final"
    assert is_adapter(final) and not (final / "model.safetensors").exists()
    assert all(f.stat().st_mode & 0o644 == 0o644 for f in final.iterdir())  # readable like any written file
    assert summary["heldout_infonce"]["best"] < summary["heldout_infonce"]["at_start"] - 0.1, summary
    assert len((tmp_path / "out" / "heldout_log.csv").read_text().splitlines()) == 1 + 5  # step 0, 5, 10, 15, 20
    encoder = SearchR3Encoder.from_pretrained(str(final), max_length=160, show_progress=False)
    policy = Policy(str(final), max_length=160)  # merged for evaluation
    np.testing.assert_allclose(encoder.encode(["find apple"], "query"), policy.embed(["find apple"], "query").numpy(),
                               atol=1e-5)
    assert heldout_infonce(policy, keyword_triples(2, 32), 0.1) == pytest.approx(summary["heldout_infonce"]["best"], abs=1e-4)
    further = Policy(str(final), lora=True, max_length=160)  # RL keeps training the same adapter
    assert {n for n, p in further.model.named_parameters() if p.requires_grad} and all(
        "lora_" in n for n, p in further.model.named_parameters() if p.requires_grad)


def test_a_saved_adapter_grows_to_more_layers_starting_as_itself(tiny_model_dir, tmp_path):
    """More capacity for a trained adapter: train_layers above the layers it covers adds zero LoRA updates there, so
    the grown model embeds as the adapter did; trained on, the grown adapter saves and loads like any other."""
    write_triples(tmp_path / "train.jsonl", keyword_triples(1, 32))
    settings = {"train_file": str(tmp_path / "train.jsonl"), "lora": True, "lora_r": 4, "learning_rate": 3e-2,
                "batch_size": 8, "max_steps": 2, "temperature": 0.1, "max_length": 160, "mixed_precision": "no"}
    top = Path(train_sft(SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "top"), train_layers=1,
                                   **settings), show_progress=False)["model"])
    texts = ["find apple", "some notes about river here"]
    grown = Policy(str(top), lora=True, train_layers=2, max_length=160, mixed_precision="no")
    assert grown.frozen_layers == 0 and all("lora_" in n for n in grown.trainable_names)
    assert {n.split(".layers.")[1].split(".")[0] for n in grown.trainable_names} == {"0", "1"}
    np.testing.assert_allclose(grown.embed(texts, "query").numpy(),
                               Policy(str(top), max_length=160).embed(texts, "query").numpy(), atol=1e-5)
    final = Path(train_sft(SFTConfig(model=str(top), output_dir=str(tmp_path / "grown"), train_layers=2, **settings),
                           show_progress=False)["model"])
    assert json.loads((final / "adapter_config.json").read_text())["layers_to_transform"] == [0, 1]
    assert json.loads((top / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    assert not np.allclose(SearchR3Encoder.from_pretrained(str(final), max_length=160).encode(texts, "query"),
                           SearchR3Encoder.from_pretrained(str(top), max_length=160).encode(texts, "query"), atol=1e-4)


def test_a_trained_adapter_carries_its_prompt_preset_to_the_evaluator(tiny_model_dir, tmp_path):
    """An adapter trained with the instruct preset records it; the evaluator and further training use it unless told
    otherwise (as a sentence-transformers model carries its prompts); a model without a record uses the paper's."""
    from searchr3_eval.models import ModelOptions, describe, load_model, parse_model_specs
    from searchr3_eval.models.lm.prompt_format import PROMPT_PRESETS

    write_triples(tmp_path / "train.jsonl", keyword_triples(1, 16))
    cfg = SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "out"), train_file=str(tmp_path / "train.jsonl"),
                    lora=True, lora_r=4, train_layers=1, batch_size=8, max_steps=1, max_length=160,
                    mixed_precision="no", prompts="instruct")
    final = Path(train_sft(cfg, show_progress=False)["model"])
    assert json.loads((final / "searchr3_adapter.json").read_text())["prompts"] == "instruct"
    spec = parse_model_specs(f"searchr3:{final}")[0]
    trained = load_model(spec, ModelOptions(max_length=160, show_progress=False), cache=None)
    assert trained.prompts == PROMPT_PRESETS["instruct"]
    assert describe(spec, ModelOptions(max_length=160)).settings == trained.settings
    paper = load_model(spec, ModelOptions(max_length=160, prompts="paper", show_progress=False), cache=None)
    assert paper.prompts == PROMPT_PRESETS["paper"] and paper.cache_key("query") != trained.cache_key("query")
    assert Policy(str(final), lora=True, max_length=160).format.prompts == PROMPT_PRESETS["instruct"]
    assert SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True).prompts == PROMPT_PRESETS["paper"]
    (tmp_path / "bad.yaml").write_text("model: m\noutput_dir: o\nprompts: chat\n")
    with pytest.raises(UserError, match="bad.yaml: unknown prompt preset 'chat'"):
        load_config(tmp_path / "bad.yaml", SFTConfig)
    manifest = final / "searchr3_adapter.json"  # explicit prompts never read the preset the manifest declares
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "prompts": "chat"}))
    with pytest.raises(UserError, match="unknown prompt preset 'chat'"):
        SearchR3Encoder.from_pretrained(str(final))
    assert SearchR3Encoder.from_pretrained(str(final), prompts=PROMPT_PRESETS["paper"]).prompts == PROMPT_PRESETS["paper"]


def test_training_data_holds_out_whole_queries_and_respects_splits(data_dir, tmp_path):
    import json

    from trainer.config import DataConfig
    from trainer.prepare import prepare_data

    pairs = tmp_path / "pairs.jsonl"
    rows = [{"query": f"q{i}", "positive": f"p{i}", "split": "TRAIN" if i % 4 else "TEST"} for i in range(40)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = DataConfig(output_dir=str(tmp_path / "data"), beir_dirs=[str(data_dir / "MiniGSM")], beir_split="test",
                     pair_files=[str(pairs)], heldout_fraction=0.25)
    summary = prepare_data(cfg)
    train, heldout = load_triples(tmp_path / "data" / "train.jsonl"), load_triples(tmp_path / "data" / "heldout.jsonl")
    assert summary["sources"][str(pairs)] == {"train": 22, "heldout": 8, "triples_by_negatives": {0: 30}}
    assert {t.query for t in train}.isdisjoint({t.query for t in heldout})
    assert not {"q0", "q4"} & {t.query for t in train + heldout}  # TEST rows are never used
    assert sum(len(t.negatives) == 1 for t in train + heldout) == 40  # the BEIR triples carry a BM25 negative
    pairs.write_text('{"query": "q"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="pairs.jsonl line 1"):
        prepare_data(cfg)


def test_training_data_caps_positives_per_query_and_adds_upper_cased_copies(data_dir, tmp_path):
    from trainer.config import DataConfig
    from trainer.prepare import prepare_data

    qrels = data_dir / "MiniGSM" / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "".join(f"q0\td{i}\t1\n" for i in range(1, 6)))  # q0: 6 positives
    task = load_task("MiniGSM", data_dir)
    capped = mine_bm25_triples(task, max_positives=2)
    assert sum(t.query == task.queries["q0"] for t in capped) == 2 and len(capped) == 39 + 2
    assert len(mine_bm25_triples(task)) == 39 + 6
    cfg = DataConfig(output_dir=str(tmp_path / "data"), beir_dirs=[str(data_dir / "MiniGSM")], beir_split="test",
                     max_positives=2, case_fraction=0.5, heldout_fraction=0.25)
    summary = prepare_data(cfg)
    train = load_triples(tmp_path / "data" / "train.jsonl")
    upper = [t for t in train if t.query == t.query.upper()]
    assert summary["case_copies"] == len(upper) == round((summary["train"] - len(upper)) * 0.5) > 0
    assert {t.query.lower() for t in upper} <= {t.query.lower() for t in train if t not in upper}
    assert any(t.positive == t.positive.upper() for t in upper) and any(t.positive != t.positive.upper() for t in upper)
    assert not {t.query.upper() for t in load_triples(tmp_path / "data" / "heldout.jsonl")} & {t.query for t in upper}
    # for a query adapter's fixed index, only the queries are upper-cased
    queries_only = prepare_data(DataConfig(**{**vars(cfg), "output_dir": str(tmp_path / "q"), "case_documents": False}))
    upper = [t for t in load_triples(tmp_path / "q" / "train.jsonl") if t.query == t.query.upper()]
    assert queries_only["case_copies"] == summary["case_copies"] == len(upper)
    assert all(t.positive != t.positive.upper() for t in upper)
    # with a fold, each copy is the text that fold makes of its capitals at evaluation (same seed: same triples, order)
    folded = prepare_data(DataConfig(**{**vars(cfg), "output_dir": str(tmp_path / "f"), "case_fold": "all-caps-sentence"}))
    assert folded["case_copies"] == summary["case_copies"]
    pairs = list(zip(train, load_triples(tmp_path / "f" / "train.jsonl"), strict=True))
    shouted = [(a, b) for a, b in pairs if a.query == a.query.upper()]
    assert all(b == a for a, b in pairs if a.query != a.query.upper())
    assert all(b.query == fold_case(a.query, "all-caps-sentence") and b.positive == fold_case(a.positive, "all-caps-sentence")
               for a, b in shouted)
    assert any(b.query != a.query for a, b in shouted) and any(b.positive != a.positive for a, b in shouted)


def test_training_data_adds_each_titled_document_as_its_own_titles_query_to_train_only(shared_beir, tmp_path):
    from dataclasses import replace

    from searchr3_eval.data import document_text
    from trainer.config import DataConfig
    from trainer.prepare import prepare_data

    plain = DataConfig(output_dir=str(tmp_path / "plain"), beir_dirs=[str(shared_beir / "scifact")], beir_split="train")
    titled = replace(plain, output_dir=str(tmp_path / "titled"), title_query_dirs=[str(shared_beir / "scifact")])
    prepare_data(plain)
    summary = prepare_data(titled)
    read = {name: (load_triples(tmp_path / name / "train.jsonl"), load_triples(tmp_path / name / "heldout.jsonl"))
            for name in ("plain", "titled")}
    assert read["plain"][1] == read["titled"][1]  # selection stays on the same real held-out queries
    corpus = load_task("scifact", shared_beir, split="train").corpus
    added = [t for t in read["titled"][0] if t not in read["plain"][0]]
    assert len(added) == summary["sources"][f"titles of {shared_beir / 'scifact'}"]["train"] > 5000
    by_title = {}
    for doc in corpus.values():
        by_title.setdefault(doc["title"], set()).add(document_text(doc))
    assert all(t.positive in by_title[t.query] and not t.negatives for t in added)
    assert len(added) == sum(len(texts) for title, texts in by_title.items() if title.strip())
    assert summary["train"] == len(read["plain"][0]) + len(added)
    # the held-out queries as a BEIR task with every document their train qrels judge, as the runner loads one
    from trainer.prepare import write_heldout_task

    counts = write_heldout_task(plain, tmp_path / "tasks" / "heldout")
    task, source = load_task("heldout", tmp_path / "tasks"), load_task("scifact", shared_beir, split="train")
    held = {t.query for t in read["plain"][1]}
    assert set(task.queries.values()) == held and counts["queries"] == len(held) > 50
    assert len(task.corpus) == counts["documents"] == len(source.corpus)
    text_id = {text: qid for qid, text in source.queries.items()}
    assert task.qrels == {f"scifact/{text_id[text]}": {f"scifact/{d}": g for d, g in source.qrels[text_id[text]].items()}
                          for text in held}
    for t in read["plain"][1]:  # each sampled positive is among its query's judged documents
        (qid,) = [q for q, text in task.queries.items() if text == t.query]
        assert t.positive in {document_text(task.corpus[d]) for d in task.qrels[qid]}


def test_a_pair_file_becomes_a_task_of_its_distinct_queries_over_every_text_it_names(shared_beir, tmp_path):
    from trainer.prepare import write_pairs_task

    pairs = shared_beir.parent / "train" / "wikiqa_train_pairs.jsonl"
    counts = write_pairs_task(pairs, tmp_path / "tasks" / "wikiqa-train")
    task, rows = load_task("wikiqa-train", tmp_path / "tasks"), load_triples(pairs)
    texts = {t for r in rows for t in (r.positive, *r.negatives)}
    assert counts == {"documents": len(task.corpus), "queries": len(task.queries), "judgements": 1039}
    assert {d["text"] for d in task.corpus.values()} == texts and len(texts) == len(task.corpus) == 8312
    assert sorted(task.queries.values()) == sorted({r.query for r in rows}) and len(task.queries) == 872
    positives = {}
    for r in rows:
        positives.setdefault(r.query, set()).add(r.positive)
    assert {task.queries[q]: {task.corpus[d]["text"] for d in judged} for q, judged in task.qrels.items()} == positives
    assert all(set(g.values()) == {1} for g in task.qrels.values())


def test_rl_over_a_beir_corpus_caches_only_the_documents_lower_layers(tiny_model_dir, data_dir, tmp_path):
    from trainer.rl import beir_training_set

    triples, corpus = beir_training_set(data_dir / "MiniGSM", "test")
    assert len(corpus.doc_ids) == 40 and len(triples) == 40 and set(corpus.positive_ids) <= set(corpus.doc_ids)
    cfg = RLConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "rl"), beir_dir=str(data_dir / "MiniGSM"),
                   group_size=2, max_new_tokens=6, batch_size=2, steps=2, max_length=200, lora=True, train_layers=1,
                   refresh_every=8, top_k=3)
    trainer = RetrievalGRPO(cfg, triples, corpus)
    documents = len(trainer.policy.lower_cache.states)
    assert documents == len(set(corpus.doc_texts))  # the whole index was built through the cache
    log = trainer.step(triples[:2], corpus.positive_ids[:2])
    assert 5 <= log["refreshed_docs"] < 40  # 40/8 round-robin + positives + top-3 candidates, not the whole corpus
    assert len(trainer.policy.lower_cache.states) == documents  # rollouts were not kept


def test_rl_run_audits_its_index_against_a_fresh_one(tiny_model_dir, data_dir, tmp_path):
    """With the policy left unchanged (learning rate 0) the partially refreshed index must agree with a fresh one."""
    from trainer.rl import train_rl

    cfg = RLConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "rl"), beir_dir=str(data_dir / "MiniGSM"),
                   beir_split="test", group_size=2, max_new_tokens=6, batch_size=2, steps=2, max_length=200,
                   lora=True, train_layers=1, refresh_every=8, top_k=3, learning_rate=0.0, mixed_precision="no",
                   audit_queries=10, audit_every=1, rank_band=0.05, audit_noise=0.01)
    train_rl(cfg, show_progress=False)
    audit = json.loads((tmp_path / "rl" / "index_audit.json").read_text())
    assert audit["documents"] == 40 and audit["steps"] == 2 and audit["queries_compared"] == 10
    assert 0 < audit["partial_refresh_docs_mean"] < audit["documents"]  # not a timing bound: seconds vary with load
    assert audit["refresh_cost_vs_full_reencode"] > 0 and audit["refresh_cost_vs_full_refresh"] > 0
    assert audit["positive_rank_agreement (same rank)"] == 1.0 and audit["top10_overlap_partial_vs_fresh"] == 1.0
    assert audit["rewarded_ranks_compared"] == 2 * 2 * 2  # steps x queries x rollouts, each audited
    assert audit["rewarded positive_rank_agreement (same rank)"] == 1.0
    assert audit["rewarded_ranks_with_noise_range"] == 8 and audit["audit_noise"] == 0.01
    assert audit["rewarded positive_rank_agreement (within the fresh index's noise range) [noise-ranged audits]"] == 1.0
    assert audit["positive_rank_agreement (within the fresh index's noise range)"] == 1.0


def test_noise_range_counts_near_ties_with_the_positive_as_agreement():
    """A rank that differs from the fresh index's only by documents within the noise of the positive's score agrees
    within noise; one a document well above the positive moved does not."""
    from trainer.environment import positive_rank_range, rank_agreement

    fresh = np.array([[0.500, 0.503, 0.490, 0.600, 0.497], [0.500, 0.530, 0.490, 0.600, 0.470]])
    ranges = positive_rank_range(fresh, [0, 0], tolerance=0.004)
    assert ranges.tolist() == [[2, 4], [3, 3]]  # the 0.503 and 0.497 near-ties may be either side of the positive
    rewarded, fresh_ranks = np.array([4, 2]), np.array([3, 3])
    agreement = rank_agreement(rewarded, fresh_ranks, ranges)
    assert agreement["positive_rank_agreement (same rank)"] == 0.0
    assert agreement["positive_rank_agreement (within the fresh index's noise range)"] == 0.5


def test_rl_resumes_from_its_checkpoint_with_the_index_and_matches_an_uninterrupted_run(tiny_model_dir, data_dir,
                                                                                       tmp_path):
    """A run stopped after its step-2 checkpoint and started again continues at step 3 with the saved index (no
    corpus re-encode), the same data order and sampling RNG: its log, weights and audit match an uninterrupted run's."""
    from safetensors.torch import load_file

    from trainer.rl import train_rl

    def config(folder: str, steps: int) -> RLConfig:
        return RLConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / folder), beir_dir=str(data_dir / "MiniGSM"),
                        beir_split="test", group_size=2, max_new_tokens=6, batch_size=2, steps=steps, max_length=200,
                        lora=True, train_layers=1, refresh_every=8, top_k=3, learning_rate=1e-3, save_every=2,
                        mixed_precision="no", format_reward=0.0, audit_every=2)

    whole = train_rl(config("whole", 4), show_progress=False)
    train_rl(config("split", 3), show_progress=False)  # "stopped" after step 3; its checkpoint is at step 2
    resumed = train_rl(config("split", 4), show_progress=False)
    assert resumed["resumed_at"] == 2 and whole["resumed_at"] == 0
    logs = [list(csv.DictReader(open(tmp_path / f / "rl_log.csv"))) for f in ("whole", "split")]
    assert [r["step"] for r in logs[1]] == ["1", "2", "3", "4"]  # step 3 ran again; its first row was dropped
    for column in ("mean_rr", "refreshed_docs"):
        assert [float(r[column]) for r in logs[0]] == pytest.approx([float(r[column]) for r in logs[1]], abs=1e-6)
    audits = [json.loads((tmp_path / f / "index_audit.json").read_text()) for f in ("whole", "split")]
    for audit in audits:  # steps 2 and 4 audited: the resumed run kept step 2's ranks and full-refresh timing
        assert audit["rewarded_ranks_compared"] == 2 * 2 * 2 and audit["full_refreshes_timed"] == 2
    a, b = (load_file(str(tmp_path / f / "final" / "adapter_model.safetensors")) for f in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # the resumed trainer starts with the documents' lower-layer states: its refreshes run only the trained layer
    from trainer.rl import RetrievalGRPO, training_set
    from trainer.sft import load_checkpoint

    cfg, cache_file = config("split", 4), tmp_path / "split" / "lower_cache.0-of-1.pt"
    triples, corpus = training_set(cfg)
    resumed_trainer = RetrievalGRPO(cfg, triples, corpus, load_checkpoint(tmp_path / "split" / "checkpoint"), cache_file)
    assert len(resumed_trainer.policy.lower_cache.states) >= len(corpus.doc_ids) == 40


def test_sft_on_two_gloo_processes_matches_one_process(tiny_model_dir, tmp_path):
    """The same global batch split over 2 CPU processes: InfoNCE over the whole batch, gradients averaged, so every
    step's losses equal one process's (a wrong gradient shows from step 2 on)."""
    import csv
    import subprocess
    import sys

    import yaml

    write_triples(tmp_path / "train.jsonl", keyword_triples(1, 32))
    logs = {}
    for processes in (1, 2):
        config = {"model": str(tiny_model_dir), "output_dir": str(tmp_path / f"p{processes}"),
                  "train_file": str(tmp_path / "train.jsonl"), "batch_size": 8, "max_steps": 4, "learning_rate": 1e-2,
                  "temperature": 0.1, "max_length": 160, "mixed_precision": "no", "lora": True, "train_layers": 1,
                  "weights": {"sft": 1.0, "kl": 0.1, "infonce": 1.0, "triplet": 1.0}}
        (tmp_path / f"p{processes}.yaml").write_text(yaml.safe_dump(config))
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        command = (launcher if processes == 2 else [sys.executable]) + [
            "-m", "trainer.cli", "sft", "--config", str(tmp_path / f"p{processes}.yaml")]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs[processes] = list(csv.DictReader(open(tmp_path / f"p{processes}" / "loss_log.csv")))
    assert len(logs[1]) == len(logs[2]) == 4
    for one, two in zip(logs[1], logs[2]):
        for term in ("total", "sft", "kl", "infonce", "triplet"):
            assert float(two[term]) == pytest.approx(float(one[term]), rel=1e-4, abs=1e-5), (one["step"], term)
    assert float(logs[1][-1]["total"]) < float(logs[1][0]["total"])  # the steps did train


def test_fsdp_sft_on_two_gloo_processes_matches_one_process_and_resumes_in_one(tiny_model_dir, tmp_path):
    """``accelerate launch`` with the shipped FSDP2 config shards a full fine-tune (tied embeddings, a sharded KL reference) across 2 CPU
    processes: every step's losses equal one process's; the gathered checkpoint resumes in one process exactly where
    an uninterrupted run goes, and the best held-out model is the same."""
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file

    write_triples(tmp_path / "train.jsonl", keyword_triples(1, 32))
    write_triples(tmp_path / "heldout.jsonl", keyword_triples(2, 8))

    def sft(name: str, steps: int, launcher: list[str]) -> list[dict]:
        config = {"model": str(tiny_model_dir), "output_dir": str(tmp_path / name), "train_file": str(tmp_path / "train.jsonl"),
                  "eval_file": str(tmp_path / "heldout.jsonl"), "eval_every": 2, "save_every": 2, "batch_size": 8,
                  "max_steps": steps, "learning_rate": 1e-2, "temperature": 0.1, "max_length": 160,
                  "mixed_precision": "no", "weights": {"sft": 1.0, "kl": 0.1, "infonce": 1.0, "triplet": 1.0}}
        (tmp_path / f"{name}-{steps}.yaml").write_text(yaml.safe_dump(config))
        proc = subprocess.run([*launcher, "-m", "trainer.cli", "sft", "--config", str(tmp_path / f"{name}-{steps}.yaml")],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return list(csv.DictReader(open(tmp_path / name / "loss_log.csv")))

    shipped = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "accelerate_fsdp.yaml"
    fsdp = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(shipped), "--num_processes", "2"]
    one = sft("one", 6, [sys.executable])
    sharded = sft("sharded", 4, fsdp)
    resumed = sft("sharded", 6, [sys.executable])  # the FSDP run's checkpoint (step 4), continued by one process
    assert len(sharded) == 4 and len(resumed) == 6
    for expected, got in zip(one, resumed):  # steps 1-4 sharded, 5-6 resumed
        for term in ("total", "sft", "kl", "infonce", "triplet"):
            assert float(got[term]) == pytest.approx(float(expected[term]), rel=1e-4, abs=1e-5), (got["step"], term)
    assert float(one[-1]["total"]) < float(one[0]["total"])
    ours, theirs = (load_file(tmp_path / name / "final" / "model.safetensors") for name in ("sharded", "one"))
    assert ours.keys() == theirs.keys() and "lm_head.weight" not in ours  # the tied weight saved once
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-4) for k in ours)


@pytest.mark.parametrize(("env", "config", "stage", "message"), [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, {}, "sft", "DeepSpeed is not supported"),
    ({"FSDP_VERSION": "1"}, {}, "sft", "FSDP version 1 is not supported"),
    pytest.param({"FSDP_OFFLOAD_PARAMS": "true"}, {}, "sft", "fsdp_offload_params moves weights from a GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="offloading from a GPU is allowed")),
    ({}, {"lora": True, "train_layers": 1}, "sft", "train_layers is not supported with FSDP"),
    ({}, {"lora": True, "train_layers": 1, "steps": 1}, "rl", "train_layers is not supported with FSDP"),
])
def test_launches_the_trainer_cannot_honour_stop_with_one_line(monkeypatch, capsys, tmp_path, env, config, stage, message):
    from trainer.cli import main

    for key, value in {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "2", **env}.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "c.yaml").write_text(json.dumps({"model": "unused", "output_dir": str(tmp_path / "out"),
                                                 "train_file": str(tmp_path / "none.jsonl"), **config}))
    assert main([stage, "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_rl_on_two_gloo_processes_shares_the_environment_and_keeps_replicas_in_sync(tiny_model_dir, data_dir, tmp_path):
    """The index built by 2 processes (each encoding half the corpus) equals 1 process's; after GRPO steps on each
    process's share of the batch both processes hold the same index and the same weights."""
    import subprocess
    import sys

    worker = str(Path(__file__).with_name("rl_worker.py"))
    for launcher in ([sys.executable], [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]):
        proc = subprocess.run([*launcher, worker, str(tiny_model_dir), str(data_dir), str(tmp_path)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    start = [np.load(tmp_path / name) for name in ("index-start-1-0.npy", "index-start-2-0.npy", "index-start-2-1.npy")]
    assert start[0].shape == (40, 32) and np.allclose(start[0], start[1], atol=1e-5) and np.array_equal(start[1], start[2])
    assert np.array_equal(np.load(tmp_path / "index-end-2-0.npy"), np.load(tmp_path / "index-end-2-1.npy"))
    ranks = [torch.load(tmp_path / f"weights-2-{r}.pt") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert not np.array_equal(np.load(tmp_path / "index-end-2-0.npy"), start[1])  # the steps changed the policy


def test_fsdp_rl_on_two_gloo_processes_matches_the_unsharded_run(tiny_model_dir, data_dir, tmp_path):
    """GRPO with the model sharded by FSDP2 (rollouts generated in step across processes, the environment's encoding
    split with equal forward counts, a process with nothing to encode included) takes the same steps as 2 unsharded
    processes: the same rewards and losses, the same index and the same weights. Processes whose generations end at
    different lengths do not hang."""
    import json
    import subprocess
    import sys

    worker = str(Path(__file__).with_name("rl_worker.py"))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
    for name, flags in (("-all-layers", ["--multi_gpu"]), ("-all-layers-fsdp", ["--use_fsdp", "--fsdp_version", "2"])):
        proc = subprocess.run([*launch, *flags, worker, str(tiny_model_dir), str(data_dir), str(tmp_path), name],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    load = lambda kind, name, ext: (np.load if ext == "npy" else torch.load)(tmp_path / f"{kind}{name}-2-0.{ext}")  # noqa: E731
    for kind in ("index-start", "index-end", "one-document"):
        assert np.allclose(load(kind, "-all-layers", "npy"), load(kind, "-all-layers-fsdp", "npy"), atol=1e-5), kind
    plain, sharded = (json.loads((tmp_path / f"steps{name}-2-0.json").read_text()) for name in ("-all-layers", "-all-layers-fsdp"))
    for a, b in zip(plain, sharded):
        for key in ("mean_reward", "loss", "kl", "refreshed_docs"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    weights = [load("weights", name, "pt") for name in ("-all-layers", "-all-layers-fsdp")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5) for k in weights[0])
    assert not np.allclose(load("index-end", "-all-layers-fsdp", "npy"), load("index-start", "-all-layers-fsdp", "npy"))
    generated = [json.loads((tmp_path / f"generated-all-layers-fsdp-2-{r}.json").read_text()) for r in (0, 1)]
    assert max(generated[0]) <= 2 < max(generated[1]) <= 6  # rank 0 finished first and waited in step


def test_lora_continued_from_an_adapter_keeps_that_adapter_as_its_kl_reference(tiny_model_dir, tmp_path):
    """RL on top of an SFT adapter: KL must pull towards the SFT model it started from, not towards the base."""
    start = Policy(str(tiny_model_dir), lora=True, mixed_precision="no")
    with torch.no_grad():
        for name, p in start.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # an adapter that really changes the model
    start.save(tmp_path / "sft")
    policy = Policy(str(tmp_path / "sft"), lora=True, mixed_precision="no")
    sequences = policy.direct_sequences(["find apples", "a note about pears"], "query")[0]
    trainable = [name for name, p in policy.model.named_parameters() if p.requires_grad]
    with torch.no_grad():
        current = policy.forward(sequences).hidden
        with policy.reference_model() as reference:
            ref = policy.forward(sequences, reference).hidden
        with policy.model.disable_adapter():
            base = policy.forward(sequences).hidden
    assert torch.allclose(current, ref, atol=1e-5) and not torch.allclose(current, base, atol=1e-3)
    assert [name for name, p in policy.model.named_parameters() if p.requires_grad] == trainable
    assert trainable and all("reference" not in name for name in trainable)
    policy.save(tmp_path / "rl")
    assert not (tmp_path / "rl" / "reference").exists()
    reloaded = Policy(str(tmp_path / "rl"), lora=True, mixed_precision="no")
    with torch.no_grad():
        assert torch.allclose(reloaded.forward(sequences).hidden, current, atol=1e-5)


def test_score_distillation_is_the_kl_from_the_teachers_batch_softmax_to_the_students():
    from trainer.losses import score_distillation

    rng = np.random.default_rng(0)
    q, d, tq, td = (torch.tensor(rng.normal(size=shape), dtype=torch.float32) for shape in ((3, 5), (6, 5), (3, 4), (6, 4)))

    def softmax_rows(a, b, temperature):
        a, b = a.numpy(), b.numpy()
        s = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T / temperature
        e = np.exp(s - s.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_teacher, p_student = softmax_rows(tq, td, 0.1), softmax_rows(q, d, 0.05)
    expected = (p_teacher * np.log(p_teacher / p_student)).sum(1).mean()
    assert score_distillation(q, d, tq, td, 0.05, 0.1).item() == pytest.approx(expected, rel=1e-4)
    assert score_distillation(q, d, 2 * q, 3 * d, 0.05, 0.05).item() == pytest.approx(0.0, abs=1e-6)


def test_sft_distils_minilms_batch_scores_into_the_student(tiny_model_dir, tmp_path):
    """With distillation alone, the student's in-batch score distribution moves toward all-MiniLM-L6-v2's."""
    write_triples(tmp_path / "train.jsonl", keyword_triples(1, 64))
    cfg = SFTConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "out"), train_file=str(tmp_path / "train.jsonl"),
                    weights=LossWeights(sft=0, kl=0, infonce=0, triplet=0, distill=1), teacher="minilm",
                    learning_rate=1e-2, batch_size=16, max_steps=30, save_every=30, temperature=0.1,
                    max_length=160, mixed_precision="no")
    train_sft(cfg, show_progress=False)
    rows = list(csv.DictReader(open(tmp_path / "out" / "loss_log.csv")))
    distill = [float(r["distill"]) for r in rows]
    assert float(rows[0]["infonce"]) > 0 and distill[0] > 0
    infonce = [float(r["infonce"]) for r in rows]  # logged, not trained: the teacher ranks the positive first
    assert np.mean(distill[-5:]) < 0.8 * np.mean(distill[:5]), distill
    assert np.mean(infonce[-5:]) < np.mean(infonce[:5]), infonce
    cfg.teacher = None
    with pytest.raises(UserError, match="needs teacher"):
        train_sft(cfg, show_progress=False)
