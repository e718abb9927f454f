"""GRPO-style RL: sample G reasoning rollouts per query, reward their embeddings' retrieval quality.

reward = 1 / rank(positive) (of the rollout's embedding, mixed with its query's direct one by
``reasoning_direct_weight``) + format_reward * [the answer ended as trained: the embed token, or the direct phrase that
only the token may follow] - bare_penalty * [the answer writes no analysis];
advantages are normalised within each query's group; the loss is the clipped policy-gradient objective
plus ``kl_beta`` * KL to the reference model (k3 estimator), over the generated tokens.
"""
from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from searchr3_eval import distributed
from searchr3_eval.atomic import atomic_write_json
from searchr3_eval.data import document_text, load_beir_folder
from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.forward import left_pad
from searchr3_eval.models.lm.generate import analysis_length, direct_phrase, generation_stops
from searchr3_eval.models.searchr3 import mix_direct
from trainer import collectives, sharding
from trainer.config import RLConfig
from trainer.data import Triple, load_triples
from trainer.environment import (
    FrozenIndex, RetrievalEnvironment, agreement_with_fresh_index, fresh_copy, rank_agreement,
)
from trainer.frozen_index import corpus_info_nce, document_embeddings
from trainer.logging_utils import CSVLog, plot_log
from trainer.losses import require_finite
from trainer.modeling import Policy
from trainer.optim import check_resumed_config, clip_and_step, make_optimizer
from trainer.prepare import held_out_queries
from trainer.sft import load_checkpoint, load_schedule, run_state, save_checkpoint

COLUMNS = ["step", "mean_reward", "mean_rr", "format_rate", "reward_spread", "loss", "kl", "refreshed_docs",
           "refresh_seconds", "rollout_seconds", "generation_seconds", "update_seconds", "tokens_per_second", "lr",
           "grad_norm"]


@dataclass
class Rollouts:
    prompts: list[list[int]]
    actions: list[list[int]]  # generated tokens, up to and including the first stop token or the direct phrase
    emitted: list[bool]  # the answer ended as trained (the embed token, or the direct phrase)
    embeddings: np.ndarray
    sequences: list[list[int]]  # what each embedding is read from: prompt, analysis, the embed token
    generation_seconds: float = 0.0
    direct: np.ndarray | None = None  # each rollout's query embedded directly, where the embeddings mix it in


def is_bare(analysis: str, phrase: str, lead: str = "") -> bool:
    """An analysis that writes nothing before the direct phrase but, at most, a lead: one ending in a colon ("Relevant
    paper: The embedding is"), or the words of ``lead`` whatever their punctuation ("Relevant paper. The embedding
    is", the way a policy penalised only for the first escaped the penalty)."""
    body = analysis.strip().removesuffix(phrase).strip()
    if not body or body.endswith(":"):
        return True
    return bool(lead) and set(re.findall(r"\w+", body.lower())) <= set(re.findall(r"\w+", lead.lower()))


def corpus_from_triples(triples: list[Triple]) -> tuple[list[str], list[str], list[str]]:
    """Unique documents (positives and negatives) with ids, and each triple's positive id."""
    ids: dict[str, str] = {}
    for t in triples:
        for text in [t.positive, *t.negatives]:
            ids.setdefault(text, f"doc{len(ids)}")
    return list(ids.values()), list(ids), [ids[t.positive] for t in triples]


@dataclass
class Corpus:
    """The environment's documents and, per training query, the id of its positive."""

    doc_ids: list[str]
    doc_texts: list[str]
    positive_ids: list[str]


def beir_training_set(folder: Path, split: str) -> tuple[list[Triple], Corpus]:
    """One (query, positive) per judged pair of ``split``; the environment is the folder's whole corpus."""
    task = load_beir_folder(folder, split)
    triples, positive_ids = [], []
    for qid, judged in task.qrels.items():
        for doc_id, grade in judged.items():
            if grade > 0 and doc_id in task.corpus:
                triples.append(Triple(task.queries[qid], document_text(task.corpus[doc_id]), []))
                positive_ids.append(doc_id)
    doc_ids = list(task.corpus)
    return triples, Corpus(doc_ids, [document_text(task.corpus[d]) for d in doc_ids], positive_ids)


def training_set(cfg: RLConfig) -> tuple[list[Triple], Corpus]:
    if cfg.beir_dir:
        return beir_training_set(Path(cfg.beir_dir), cfg.beir_split)
    if not cfg.train_file:
        raise UserError("the RL config needs train_file or beir_dir")
    triples = load_triples(cfg.train_file)
    return triples, Corpus(*corpus_from_triples(triples))


class RetrievalGRPO:
    """GRPO against a retrieval environment: rollouts are analyses ending at the embed token, rewarded by the rank of
    the positive among the environment's corpus (this project's trainer, not TRL's ``GRPOTrainer``; the options keep
    their own names: ``group_size`` is TRL's ``num_generations``, ``kl_beta`` its ``beta``, ``ppo_epochs`` its
    ``num_iterations``, ``clip_eps`` its ``epsilon``)."""

    def __init__(self, cfg: RLConfig, triples: list[Triple], corpus: Corpus | None = None, checkpoint: dict | None = None,
                 lower_cache_file: Path | None = None):
        """``checkpoint`` (a saved ``state.pt``) resumes: weights, optimiser, the index and the sampling RNG (a
        checkpoint without the index, saved by an older version, has its corpus re-encoded with its weights).
        ``lower_cache_file``: where ``keep_lower_cache`` writes the documents' frozen lower-layer states, restored
        with a checkpoint so that a resumed run's refreshes re-run only the trained layers."""
        self.cfg, self.lower_cache_file, self.lower_states_saved = cfg, lower_cache_file, 0
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.triples = triples
        self.policy = Policy.from_config(cfg, max_new_tokens=cfg.max_new_tokens)
        if (plugin := sharding.fsdp_plugin()) is not None:
            self.policy.shard(plugin)
        self.trainable = [p for p in self.policy.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(self.trainable, cfg, cfg.learning_rate, cfg.steps * cfg.ppo_epochs)
        if checkpoint:
            check_resumed_config(checkpoint.get("config"), cfg, f"{cfg.output_dir}/checkpoint")
            sharding.load_training_state(self.policy.model, self.optimizer, checkpoint["model"], checkpoint["optimizer"])
            load_schedule(self.scheduler, checkpoint, checkpoint["step"] * cfg.ppo_epochs)
            if self.policy.lower_cache is not None and lower_cache_file is not None and lower_cache_file.exists():
                self.policy.lower_cache.load(lower_cache_file)
                self.lower_states_saved = len(self.policy.lower_cache.states)
        elif lower_cache_file is not None:  # a fresh run: a cache left by another run may hold other frozen layers
            lower_cache_file.unlink(missing_ok=True)
        corpus = corpus or Corpus(*corpus_from_triples(triples))
        self.positive_ids = corpus.positive_ids
        if self.policy.query_adapter:  # the document model's index as the evaluation embeds it (cached on a resume)
            self.env = FrozenIndex(corpus.doc_ids, *document_embeddings(
                f"searchr3:{self.policy.document_model}", corpus.doc_texts, cfg.cache_dir, show_progress=False))
        else:
            # documents go through the training forward: with train_layers their frozen lower layers are computed
            # once, so a refresh re-runs only the trained top layers; across processes each encodes a share, all get
            # the index
            self.env = RetrievalEnvironment(corpus.doc_ids, corpus.doc_texts, lambda texts: collectives.map_sharded(
                lambda share: self.policy.embed(share, "document", cfg.max_document_length, cfg.batch_tokens), texts),
                top_k=cfg.top_k, refresh_every=cfg.refresh_every, rank_band=cfg.rank_band, drift_band=cfg.drift_band,
                state=(checkpoint or {}).get("environment"))
        # (rank rewarded, rank in a freshly encoded index[, its best and worst rank within audit_noise]) of every
        # rollout of the audited steps
        self.reward_audits: list[tuple[int, ...]] = (checkpoint or {}).get("reward_audits", [])
        self.full_refresh_seconds: list[float] = (checkpoint or {}).get("full_refresh_seconds", [])
        if checkpoint and "rng" in checkpoint:
            torch.set_rng_state(checkpoint["rng"])
        self.stop_ids = self.policy.stop_ids

    @torch.no_grad()
    def rollout(self, queries: list[str], group_size: int, generator: torch.Generator | None = None,
                greedy: bool = False) -> Rollouts:
        """Sample ``group_size`` analyses per query (``greedy``: one, as the evaluation writes it) and embed each (the
        embed token appended if missing); an analysis ends where the evaluation's generator ends it."""
        model, tokenizer = self.policy.model, self.policy.tokenizer
        pad, phrase = tokenizer.pad_token_id, direct_phrase(self.policy.format.prompts.direct_answer)
        model.eval()
        prompts = [p for p in self.policy.format.generation_prompts(queries, "query") for _ in range(group_size)]
        ids, mask = (t.to(model.device) for t in left_pad(prompts, pad))
        with torch.random.fork_rng(enabled=generator is not None):  # a seeded rollout leaves the training RNG alone
            if generator is not None:
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            sampling = {} if greedy else {"temperature": self.cfg.temperature, "top_k": 0, "top_p": 1.0}
            start = time.perf_counter()
            with self.policy.autocast():  # as the policy's forwards: bf16 where the device computes it natively
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.cfg.max_new_tokens,
                                     do_sample=not greedy, **sampling, pad_token_id=pad,
                                     synced_gpus=self.policy.sharded,  # sharded: all generate as long
                                     **generation_stops(tokenizer, self.stop_ids, phrase))
            generation_seconds = time.perf_counter() - start
        actions, emitted, sequences = [], [], []
        for prompt, row in zip(prompts, out[:, ids.shape[1] :].tolist()):
            n, ended = analysis_length(tokenizer, row, self.stop_ids, self.policy.embed_id, phrase)
            stop_token = n < len(row) and row[n] in self.stop_ids
            actions.append(row[: n + 1] if stop_token else row[:n])
            emitted.append(ended)
            sequences.append(prompt + row[:n] + [self.policy.embed_id])
        embeddings = self.policy.forward(sequences, keep_lower=False).embeddings.float().cpu().numpy()
        direct, weight = None, self.cfg.reasoning_direct_weight
        if weight > 0:  # the evaluation's reasoning embedding with --reasoning-direct-weight
            direct = self.policy.embed(queries, "query", batch_tokens=self.cfg.batch_tokens).float().cpu().numpy()
            direct = np.repeat(direct, group_size, axis=0)
            embeddings = mix_direct(embeddings, direct, weight)
        return Rollouts(prompts, actions, emitted, embeddings, sequences, generation_seconds, direct)

    def heldout_mrr(self, rows: list[int], batch_size: int = 16) -> dict:
        """Mean reciprocal rank of the positive for the greedy analyses of the triples at ``rows`` (as the evaluation
        writes them), the share of those analyses that say nothing (``is_bare``), and the mean reciprocal rank of the
        same queries embedded directly (reasoning off)."""
        reciprocal, direct, bare = [], [], 0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            queries, positives = [self.triples[i].query for i in chunk], [self.positive_ids[i] for i in chunk]
            rollouts = self.rollout(queries, 1, greedy=True)
            reciprocal += list(1.0 / self.env.ranks(rollouts.embeddings, positives))
            bare += int(self.bare_answers(rollouts).sum())
            embedded = rollouts.direct if rollouts.direct is not None else \
                self.policy.embed(queries, "query", batch_tokens=self.cfg.batch_tokens).float().cpu().numpy()
            direct += list(1.0 / self.env.ranks(embedded, positives))
        return {"heldout_mrr": float(np.mean(reciprocal)), "heldout_bare_share": bare / len(rows),
                "heldout_direct_mrr": float(np.mean(direct))}

    def keep_lower_cache(self) -> None:
        """Write the lower-layer cache to ``lower_cache_file`` when it holds more states than the file (the frozen
        layers' states never change: after the initial index it is written once, after a resume without it as the
        refreshes fill it)."""
        cache = self.policy.lower_cache
        if cache is not None and self.lower_cache_file is not None and len(cache.states) > self.lower_states_saved:
            cache.save(self.lower_cache_file)
            self.lower_states_saved = len(cache.states)

    def rewards(self, rollouts: Rollouts, positive_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(reward, the positive's reciprocal rank) of each rollout."""
        reciprocal = 1.0 / self.env.ranks(rollouts.embeddings, positive_ids)
        reward = reciprocal + self.cfg.format_reward * np.array(rollouts.emitted, dtype=np.float64)
        if self.cfg.bare_penalty:
            reward -= self.cfg.bare_penalty * self.bare_answers(rollouts)
        return reward, reciprocal

    def bare_answers(self, rollouts: Rollouts) -> np.ndarray:
        """1.0 where a rollout writes no analysis (``is_bare``), else 0.0."""
        phrase = direct_phrase(self.policy.format.prompts.direct_answer)
        decoded = self.policy.tokenizer.batch_decode(rollouts.actions, skip_special_tokens=True)
        return np.array([is_bare(text, phrase, self.cfg.analysis_lead) for text in decoded], dtype=np.float64)

    def action_logprobs(self, rollouts: Rollouts, model) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probabilities of the actions, [B, A] with zeros where there is no token, and the mask of
        the generated tokens (a token whose log-probability is exactly 0 is still one)."""
        sequences = [p + a for p, a in zip(rollouts.prompts, rollouts.actions)]
        out = self.policy.forward(sequences, model, keep_lower=False)
        span = self.policy.last_tokens_mask(sequences, [len(a) for a in rollouts.actions])
        logprobs, targets = self.policy.span_logprobs(out, span, model)
        chosen = logprobs.gather(1, targets[:, None]).squeeze(1)
        result = torch.zeros(span.shape, dtype=chosen.dtype, device=chosen.device)
        result[:, 1:][span[:, 1:]] = chosen
        return result[:, 1:], span[:, 1:].to(chosen.dtype)

    def step(self, batch: list[Triple], positive_ids: list[str], audit: bool = False) -> dict:
        """One GRPO step on this process's share of the batch; every process refreshes the same index rows (those
        of the whole batch). ``audit``: also rank the rollouts in a freshly encoded index (a full refresh) and keep
        both ranks in ``reward_audits``."""
        cfg, start = self.cfg, time.perf_counter()
        rollouts = self.rollout([t.query for t in batch], cfg.group_size)
        rollout_seconds = time.perf_counter() - start
        group_positives = [p for p in positive_ids for _ in range(cfg.group_size)]
        refresh = self.env.refresh_for_batch(np.stack(collectives.all_gather_list(list(rollouts.embeddings))),
                                             collectives.all_gather_list(group_positives))
        rewards, reciprocal = self.rewards(rollouts, group_positives)
        if audit:  # before the update: the fresh index is encoded by the policy that was rewarded
            fresh, full = fresh_copy(self.env)
            self.full_refresh_seconds.append(full.seconds)
            audited = [self.env.ranks(rollouts.embeddings, group_positives), fresh.ranks(rollouts.embeddings, group_positives)]
            if cfg.audit_noise > 0:
                audited += fresh.rank_ranges(rollouts.embeddings, group_positives, cfg.audit_noise).T.tolist()
            self.reward_audits += collectives.all_gather_list([tuple(map(int, a)) for a in zip(*audited)])
        update_start = time.perf_counter()
        update = self.update(rollouts, rewards, group_positives)
        update_seconds = time.perf_counter() - update_start
        tokens = sum(len(p) + len(a) for p, a in zip(rollouts.prompts, rollouts.actions))
        return {
            "mean_reward": float(rewards.mean()), "mean_rr": float(reciprocal.mean()),
            # the mean within-group standard deviation of the rewards: 0 means no advantage to learn from
            "reward_spread": float(rewards.reshape(-1, cfg.group_size).std(1).mean()),
            "format_rate": float(np.mean(rollouts.emitted)), **update,
            "refreshed_docs": refresh.documents, "refresh_seconds": refresh.seconds,
            "rollout_seconds": rollout_seconds, "generation_seconds": rollouts.generation_seconds,
            "update_seconds": update_seconds, "tokens_per_second": tokens / (time.perf_counter() - start),
        }

    def environment_state(self) -> dict:
        """What a checkpoint keeps of the environment: a maintained index's rows (a frozen index is rebuilt from the
        evaluation's cache instead)."""
        return {} if isinstance(self.env, FrozenIndex) else {"environment": self.env.state()}

    def index_info_nce(self, embeddings: torch.Tensor, positive_rows: torch.Tensor) -> torch.Tensor:
        """Cosine InfoNCE of embeddings against the whole index (the rows of their positives given)."""
        index = torch.from_numpy(self.env.embeddings).to(embeddings.device)
        return corpus_info_nce(embeddings, index, positive_rows, self.cfg.embedding_temperature)

    def update(self, rollouts: Rollouts, rewards: np.ndarray, positive_ids: list[str] | None = None) -> dict:
        """GRPO update: advantages normalised within each query's group, clipped surrogate, KL to the reference; with
        ``embedding_weight``, InfoNCE of the rollouts' embeddings against the index (``positive_ids``: of each rollout)."""
        cfg = self.cfg
        positive_rows = None
        if cfg.embedding_weight > 0:
            positive_rows = torch.tensor([self.env.position[d] for d in positive_ids], device=self.policy.model.device)
        grouped = rewards.reshape(-1, cfg.group_size)
        advantages = (grouped - grouped.mean(1, keepdims=True)) / (grouped.std(1, keepdims=True) + 1e-4)
        device = self.policy.model.device
        advantages = torch.tensor(advantages.reshape(-1), dtype=torch.float32, device=device)[:, None]
        # as TRL's GRPOTrainer: no reference forward when the KL term is off, and with one policy epoch no separate
        # forward for the old log-probabilities (they are the new ones, detached: the ratio is 1, its gradient is not)
        old = ref = None
        with torch.no_grad():
            if cfg.ppo_epochs > 1:
                old, _ = self.action_logprobs(rollouts, self.policy.model)
            if cfg.kl_beta > 0:
                with self.policy.reference_model() as reference:
                    ref, _ = self.action_logprobs(rollouts, reference)
        self.policy.model.train()
        for _ in range(cfg.ppo_epochs):
            new, mask = self.action_logprobs(rollouts, self.policy.model)
            if old is None:
                old = new.detach()
            ratio = (new - old).exp()
            surrogate = torch.min(ratio * advantages, ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * advantages)
            kl = (ref - new).exp() - (ref - new) - 1 if ref is not None else torch.zeros_like(new)
            per_token = -(surrogate - cfg.kl_beta * kl) * mask
            loss = (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()
            if cfg.embedding_weight > 0:
                embedded = self.policy.forward(rollouts.sequences, keep_lower=False).embeddings
                if rollouts.direct is not None:  # the rewarded mix; the direct share is a constant here
                    weight = cfg.reasoning_direct_weight
                    embedded = (1 - weight) * embedded + weight * torch.from_numpy(rollouts.direct).to(embedded.device)
                loss = loss + cfg.embedding_weight * self.index_info_nce(embedded, positive_rows)
            require_finite(loss, "rl update")
            loss.backward()
            self.policy.average_gradients(self.trainable)
            stepped = clip_and_step(self.trainable, self.optimizer, self.scheduler, cfg.max_grad_norm)
        return {"loss": float(loss.item()), "kl": float(((kl * mask).sum() / mask.sum().clamp(min=1)).item()), **stepped}

    def audit_index(self, steps: list[dict], queries: int, seed: int = 0) -> dict:
        """Refresh cost per step against a full re-encode and a full refresh; agreement with a freshly encoded index
        of the ranks the audited steps rewarded, and of the maintained index as it is (no refresh for these queries)
        for the direct embeddings of ``queries`` training queries."""
        initial, refresh = self.env.initial_refresh.seconds, float(np.mean([s["refresh_seconds"] for s in steps]))
        result = {
            "documents": len(self.env.doc_ids), "train_layers": self.cfg.train_layers, "steps": len(steps),
            "full_reencode_seconds (all layers: the initial index, which also fills the cache)": round(initial, 1),
            "partial_refresh_docs_mean": float(np.mean([s["refreshed_docs"] for s in steps])),
            "partial_refresh_seconds_mean": round(refresh, 2),
            "refresh_cost_vs_full_reencode": round(refresh / initial, 3),
            "step_seconds_mean": round(float(np.mean([s["rollout_seconds"] + s["refresh_seconds"] for s in steps])), 2),
        }
        if self.reward_audits:
            ranks, fresh_ranks = (np.array([a[i] for a in self.reward_audits]) for i in (0, 1))
            result |= {"rewarded_ranks_compared": len(ranks),
                       **{f"rewarded {k}": v for k, v in rank_agreement(ranks, fresh_ranks).items()}}
            ranged = np.array([a for a in self.reward_audits if len(a) == 4])  # audits made with audit_noise
            if len(ranged):
                within = rank_agreement(ranged[:, 0], ranged[:, 1], ranged[:, 2:])
                result |= {"audit_noise": self.cfg.audit_noise, "rewarded_ranks_with_noise_range": len(ranged),
                           **{f"rewarded {k} [noise-ranged audits]": v for k, v in within.items()}}
        full_refreshes = list(self.full_refresh_seconds)
        if queries:
            picked = np.random.default_rng(seed).choice(len(self.triples), min(queries, len(self.triples)), replace=False)
            embeddings = self.policy.embed([self.triples[i].query for i in picked], "query",
                                           batch_tokens=self.cfg.batch_tokens).cpu().numpy()
            agreement = agreement_with_fresh_index(self.env, embeddings, [self.positive_ids[i] for i in picked],
                                                   self.cfg.audit_noise)
            full_refreshes.append(agreement.pop("full_refresh_seconds"))
            result |= agreement
        if full_refreshes:
            full = float(np.mean(full_refreshes))
            result |= {"full_refreshes_timed": len(full_refreshes), "full_refresh_seconds": round(full, 1),
                       "refresh_cost_vs_full_refresh": round(refresh / full, 3)}
        return result


def batch_start(order: list[int], step: int, cfg: RLConfig) -> int:
    """Where ``step``'s batch starts in ``order``, which is reshuffled (in place, seeded) at each pass's start."""
    start = (step * cfg.batch_size) % len(order)
    if start < cfg.batch_size:
        random.Random(cfg.seed + step).shuffle(order)
    return start


def heldout_rows(triples: list[Triple], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows) of ``triples``: the queries the data stage holds out from one source with this
    ``seed`` (``trainer.prepare.held_out_queries``), with all their triples."""
    held = held_out_queries(triples, fraction, random.Random(seed))
    return [i for i, t in enumerate(triples) if t.query not in held], [i for i, t in enumerate(triples) if t.query in held]


class HeldoutSelection:
    """The held-out queries' greedy MRR (``RetrievalGRPO.heldout_mrr``), logged to ``heldout_log.csv``; ``final`` is
    the policy where it was highest (step 0, the starting policy, included: a run that never beats it keeps it)."""

    def __init__(self, trainer: RetrievalGRPO, rows: list[int], out: Path, main: bool):
        self.trainer, self.rows, self.final = trainer, rows, out / "final"
        columns = ["step", "heldout_mrr", "heldout_bare_share", "heldout_direct_mrr"]
        self.log = CSVLog(out / "heldout_log.csv", columns) if main else None

    def evaluate(self, step: int) -> None:
        """Every process calls it (a sharded policy generates on all)."""
        measured = self.trainer.heldout_mrr(self.rows)
        best = None
        if self.log is not None:
            self.log.keep_steps_up_to(step - 1)  # rows a resumed run measured after its checkpoint are measured anew
            rows = self.log.rows()
            self.log.append({"step": step, **measured})
            best = not rows or measured["heldout_mrr"] > max(float(r["heldout_mrr"]) for r in rows) or not self.final.exists()
        if distributed.broadcast_from_main(best):
            self.trainer.policy.save(self.final)


def train_rl(cfg: RLConfig, show_progress: bool = True) -> dict:
    """GRPO steps over the training queries, checkpointed every ``save_every`` steps with the index; an existing
    checkpoint is resumed without re-encoding the corpus. Launched with ``accelerate launch`` or ``torchrun``, each process takes
    an equal share of every batch, the environment's encoding is split across processes (each keeps the whole
    index), gradients are averaged, and process 0 writes logs and models."""
    sharding.check_launch(cfg.train_layers, sharding.fsdp_plugin())
    distributed.init_from_env()
    rank, size = distributed.rank_and_size()
    main = rank == 0
    triples, corpus = training_set(cfg)
    out = Path(cfg.output_dir)
    checkpoint = load_checkpoint(out / "checkpoint")  # resume: no corpus re-encode
    # each process caches the lower layers of the documents it encodes (its share of the corpus)
    trainer = RetrievalGRPO(cfg, triples, corpus, checkpoint, out / f"lower_cache.{rank}-of-{size}.pt")
    first = checkpoint["step"] if checkpoint else 0
    log = CSVLog(out / "rl_log.csv", COLUMNS) if main else None
    if log is not None:
        log.keep_steps_up_to(first)
    order, held = heldout_rows(triples, cfg.heldout_fraction, cfg.seed)
    selection = HeldoutSelection(trainer, held, out, main) if held else None
    if selection is not None and first == 0:
        selection.evaluate(0)
    steps = (checkpoint or {}).get("steps", [])
    for step in range(first):  # the data order as it was at the checkpoint
        batch_start(order, step, cfg)
    for step in tqdm(range(first, cfg.steps), desc="rl", initial=first, total=cfg.steps,
                     disable=not show_progress or not main):
        start = batch_start(order, step, cfg)
        idx = collectives.shard_of(order[start : start + cfg.batch_size], rank, size)
        audit_step = cfg.audit_every > 0 and (step + 1) % cfg.audit_every == 0
        local = trainer.step([triples[i] for i in idx], [trainer.positive_ids[i] for i in idx], audit_step)
        steps.append(collectives.mean_across_ranks(local))  # the index rows refreshed are the same on every process
        steps[-1]["tokens_per_second"] *= size
        saving = cfg.save_every and (step + 1) % cfg.save_every == 0
        if saving:
            trainer.keep_lower_cache()
        if main:
            log.append({"step": step + 1, **steps[-1]})
        if saving:
            save_checkpoint(trainer.policy, trainer.optimizer, step + 1, out / "checkpoint",
                            {**run_state(cfg, trainer.scheduler), **trainer.environment_state(),
                             "rng": torch.get_rng_state(), "steps": steps,
                             "reward_audits": trainer.reward_audits, "full_refresh_seconds": trainer.full_refresh_seconds})
        if selection is not None and ((step + 1) % (cfg.eval_every or cfg.steps) == 0 or step + 1 == cfg.steps):
            selection.evaluate(step + 1)
    audited = cfg.audit_queries or trainer.reward_audits
    audit = trainer.audit_index(steps, cfg.audit_queries) if audited else None  # every process encodes
    # final: the best held-out policy (with a held-out split), else the last; last: the policy at the last step
    trainer.policy.save(out / ("final" if selection is None else "last"))
    if main:
        plot_log(log, out / "rl_plot.png")
        if audit:
            atomic_write_json(out / "index_audit.json", audit)
    return {"steps": cfg.steps, "resumed_at": first, "model": str(out / "final"), "log": str(out / "rl_log.csv")}
