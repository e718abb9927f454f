"""SFT stage: L = w_sft*CE(answer) + w_kl*KL(policy||base) + w_infonce*InfoNCE + w_triplet*triplet
+ w_distill*KL(teacher's batch scores || the student's)."""
from __future__ import annotations

import math
import random
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from searchr3_eval import distributed
from searchr3_eval.atomic import atomic_write_folder, atomic_write_json
from searchr3_eval.data import RetrievalTask, document_text, load_beir_folder
from searchr3_eval.errors import UserError
from searchr3_eval.metrics import evaluate
from searchr3_eval.models.bm25 import bm25_index
from searchr3_eval.models.sentence_transformer import SentenceTransformerEncoder
from trainer import collectives, sharding
from trainer.config import SFTConfig
from trainer.data import Triple, judged_queries, load_triples, mine_bm25_triples
from trainer.frozen_index import FrozenDocuments, document_embeddings, ranking
from trainer.logging_utils import CSVLog, plot_log
from trainer.losses import answer_cross_entropy, info_nce, require_finite, score_distillation, token_kl, triplet
from trainer.modeling import Policy
from trainer.optim import check_resumed_config, clip_and_step, config_state, make_optimizer

# the held-out measures: +1 where higher is better, -1 where lower is
HELDOUT_SIGN = {"heldout_infonce": -1, "heldout_ndcg_at_10": 1}
COLUMNS = ["step", "total", "sft", "kl", "infonce", "triplet", "distill", "tokens_per_second", "lr", "grad_norm"]


def training_triples(cfg: SFTConfig) -> list[Triple]:
    if cfg.train_file:
        return load_triples(cfg.train_file)
    if cfg.beir_dir:
        return mine_bm25_triples(load_beir_folder(Path(cfg.beir_dir), cfg.beir_split), cfg.num_negatives)
    raise UserError("the SFT config needs train_file or beir_dir")


def load_teacher(cfg: SFTConfig) -> SentenceTransformerEncoder | None:
    """The sentence-transformers teacher of ``weights.distill`` (None when the weight is 0), on the CPU."""
    if cfg.weights.distill == 0:
        if cfg.teacher_bm25:
            raise UserError("teacher_bm25 is a share of the teacher's scores: it needs weights.distill > 0 and a teacher")
        return None
    if not cfg.teacher:
        raise UserError("weights.distill needs teacher: a sentence-transformers model (e.g. minilm)")
    return SentenceTransformerEncoder(cfg.teacher, show_progress=False)


def sft_losses(policy: Policy, batch: list[Triple], cfg: SFTConfig, index: FrozenDocuments | None = None,
               teacher: SentenceTransformerEncoder | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """All loss terms for one batch, and the number of tokens it processed. Triples may carry different numbers of
    hard negatives (up to ``num_negatives`` each): InfoNCE scores every query against all positives and negatives of
    the batch, the triplet term pairs each negative with its own query, and a ``teacher`` scores the same pairs for
    the distillation term. With a frozen ``index`` (a query adapter) no document is encoded: InfoNCE and the
    distillation term score every query against the whole corpus, and there is no triplet term."""
    docs, owners = [], []
    if index is None:
        docs = [t.positive for t in batch]
        for row, t in enumerate(batch):
            for negative in t.negatives[: cfg.num_negatives]:
                docs.append(negative)
                owners.append(row)
    q_seq, q_answer = policy.direct_sequences([t.query for t in batch], "query", cfg.max_query_length)
    d_seq, d_answer = policy.direct_sequences(docs, "document", cfg.max_document_length) if docs else ([], [])
    sequences, answers = q_seq + d_seq, q_answer + d_answer
    reasoning_rows = [row for row, t in enumerate(batch) if t.analysis] if cfg.reasoning else []
    if cfg.reasoning:  # the language model learns to write analyses; a direct answer is never generated
        r_seq, r_answer = policy.reasoning_sequences([batch[row].query for row in reasoning_rows],
                                                     [batch[row].analysis for row in reasoning_rows], "query",
                                                     cfg.max_query_length, cfg.analysis_lead)
        sequences, answers = sequences + r_seq, [0] * len(answers) + r_answer
    embeddings, logprobs, targets = policy.answer_forward(sequences, answers, batch_tokens=cfg.batch_tokens)
    kl = torch.zeros((), device=embeddings.device)
    if cfg.weights.kl > 0:  # the reference forward costs as much as the policy's; skip it when off
        with torch.no_grad(), policy.reference_model() as reference:
            _, ref_logprobs, _ = policy.answer_forward(sequences, answers, reference, cfg.batch_tokens)
        if len(targets):
            kl = token_kl(logprobs, ref_logprobs)
    size, n_docs = len(batch), len(docs)
    queries = embeddings[:size]
    views = [queries]  # each query's direct embedding, and with reasoning its reasoning one where it has an analysis
    if cfg.reasoning:
        rows = torch.tensor(reasoning_rows, dtype=torch.long, device=queries.device)
        views.append(queries.index_copy(0, rows, embeddings[size + n_docs :]))
    terms = {"sft": answer_cross_entropy(logprobs, targets) if len(targets) else logprobs.sum(), "kl": kl}
    if index is not None:
        positive_rows = index.rows([t.positive for t in batch], "sft batch")
        texts = [t.query for t in batch]
        terms |= {"infonce": sum(index.info_nce(v, positive_rows, cfg.temperature, texts) for v in views) / len(views),
                  "triplet": torch.zeros_like(kl)}
        if teacher is not None:
            taught = index.teacher_logits(_teacher_rows(teacher, texts, "query", queries.device), texts, cfg.teacher_temperature)
            terms["distill"] = sum(index.distillation(v, taught, cfg.temperature) for v in views) / len(views)
    else:
        taught = None if teacher is None else (_teacher_rows(teacher, [t.query for t in batch], "query", queries.device),
                                               _teacher_rows(teacher, docs, "document", queries.device))
        terms |= _in_batch_terms(views, embeddings[size : 2 * size], embeddings[2 * size : size + n_docs], owners, cfg,
                                 taught)
    terms.setdefault("distill", torch.zeros_like(kl))
    w = cfg.weights
    terms["total"] = (w.sft * terms["sft"] + w.kl * terms["kl"] + w.infonce * terms["infonce"]
                      + w.triplet * terms["triplet"] + w.distill * terms["distill"])
    return terms, sum(len(s) for s in sequences)


def _teacher_rows(teacher: SentenceTransformerEncoder, texts: list[str], kind: str,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.from_numpy(teacher.embed(texts, kind)[0]).to(device)


def _in_batch_terms(views: list[torch.Tensor], positives: torch.Tensor, negatives: torch.Tensor, owners: list[int],
                    cfg: SFTConfig, taught: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """InfoNCE against the batch's documents (across processes: the global batch's), the triplet term, and with the
    teacher's (query, document) embeddings ``taught`` the distillation of its scores over the same candidates."""
    all_positives, all_negatives = collectives.gather_rows(positives), collectives.gather_rows(negatives)
    all_views = [collectives.gather_rows(v) for v in views]  # each view gathered once, for every term that needs it
    distill = {}
    if taught is not None:
        size = len(positives)
        t_queries, t_candidates = collectives.gather_rows(taught[0]), torch.cat(
            [collectives.gather_rows(taught[1][:size]), collectives.gather_rows(taught[1][size:])])
        candidates = torch.cat([all_positives, all_negatives])
        distill["distill"] = sum(score_distillation(v, candidates, t_queries, t_candidates, cfg.temperature,
                                                    cfg.teacher_temperature) for v in all_views) / len(views)
    return distill | {
        # across processes InfoNCE scores every query of the global batch against all its documents
        "infonce": sum(info_nce(v, all_positives, all_negatives, cfg.temperature) for v in all_views) / len(views),
        "triplet": sum(triplet(v[owners], positives[owners], negatives[:, None, :], cfg.margin) for v in views) / len(views)
        if owners else torch.zeros((), device=positives.device),
    }


@torch.no_grad()
def heldout_infonce(policy: Policy, triples: list[Triple], temperature: float, batch_size: int = 16,
                    index: FrozenDocuments | None = None) -> float:
    """Mean InfoNCE of held-out (query, positive) pairs against the other positives of their batch (with a frozen
    ``index``: against its whole corpus), through the training forward (bf16 autocast and the lower-layer cache when
    the policy uses them)."""
    policy.model.eval()
    losses = []
    for start in range(0, len(triples), batch_size):
        batch = triples[start : start + batch_size]
        q = policy.forward(policy.direct_sequences([t.query for t in batch], "query")[0]).embeddings
        if index is not None:
            losses.append(index.info_nce(q, index.rows([t.positive for t in batch], "held-out pairs"),
                                         temperature).item() * len(batch))
            continue
        p = policy.forward(policy.direct_sequences([t.positive for t in batch], "document")[0]).embeddings
        losses.append(info_nce(q, p, None, temperature).item() * len(batch))
    return sum(losses) / len(triples)


Judgements = tuple[list[str], dict[str, dict[str, int]]]


def index_tasks(cfg: SFTConfig) -> list[RetrievalTask]:
    """``index_dirs``' ``beir_split`` tasks, read once: their corpora are a query adapter's frozen index, their qrels
    judge its training and held-out queries."""
    if not cfg.index_dirs:
        raise UserError("query_adapter SFT needs index_dirs: the BEIR folders whose corpora hold every positive")
    return [load_beir_folder(Path(folder), cfg.beir_split) for folder in cfg.index_dirs]


def index_judgements(tasks: list[RetrievalTask], queries: set[str], index: FrozenDocuments) -> dict[str, dict[int, int]]:
    """Every document that the ``tasks``' qrels judge for each of the ``queries`` they judge, as index rows (a text
    two documents share keeps the higher grade)."""
    judged = {}
    for task, qids in judged_queries(tasks, queries):
        for qid in qids:
            rows = judged.setdefault(task.queries[qid], {})
            for doc_id, grade in task.qrels[qid].items():
                row = index.row_of[document_text(task.corpus[doc_id])]
                rows[row] = max(grade, rows.get(row, grade))
    return judged


def heldout_judgements(cfg: SFTConfig, tasks: list[RetrievalTask], heldout: list[Triple],
                       index: FrozenDocuments) -> Judgements:
    """The held-out queries that the ``tasks``' qrels judge, and their judged rows keyed by query position
    (pytrec_eval's string ids, as ``FrozenDocuments.top`` names them), for the held-out nDCG@10."""
    judged = index_judgements(tasks, {t.query for t in heldout}, index)
    if not judged:
        raise UserError(f"select_on heldout_ndcg_at_10: no held-out query of {cfg.eval_file} is judged in the "
                        f"{cfg.beir_split} qrels of index_dirs")
    qrels = {str(n): {str(row): grade for row, grade in rows.items()} for n, rows in enumerate(judged.values())}
    return list(judged), qrels


@torch.no_grad()
def heldout_ndcg(policy: Policy, judgements: Judgements, index: FrozenDocuments) -> float:
    """Mean nDCG@10 (pytrec_eval, as the evaluation computes it) of the held-out queries' direct embeddings against
    the whole index, over every document judged for them."""
    texts, qrels = judgements
    return evaluate(qrels, index.top(policy.embed(texts, "query"))).scores["ndcg_at_10"]


@torch.no_grad()
def teacher_heldout_ndcg(teacher_queries: torch.Tensor, judgements: Judgements, index: FrozenDocuments) -> float:
    """The held-out nDCG@10 of the teacher's own scores over the whole index (``FrozenDocuments.teacher_logits``) for
    its embeddings of the held-out queries (``teacher_queries``, in ``judgements``' order): the ranking its
    distillation teaches."""
    texts, qrels = judgements
    return evaluate(qrels, ranking(index.teacher_logits(teacher_queries, texts, 1.0))).scores["ndcg_at_10"]


def teacher_bm25_sweep(cfg: SFTConfig, shares: list[float], show_progress: bool = True) -> dict[float, float]:
    """``teacher_heldout_ndcg`` of ``cfg``'s teacher at each BM25 share (``teacher_bm25``), on its ``eval_file``'s
    judged held-out queries: how a hybrid teacher's share is chosen without a test query."""
    if not cfg.teacher or not cfg.eval_file:
        raise UserError("a teacher sweep needs a config with a teacher and an eval_file")
    if wrong := [share for share in shares if not 0 <= share <= 1]:
        raise UserError(f"teacher_bm25 {wrong[0]:g} is not a share: use numbers from 0 to 1")
    tasks = index_tasks(cfg)
    texts = index_texts(tasks)
    taught = document_embeddings(cfg.teacher, texts, cfg.cache_dir, show_progress)[0]
    # the judged rows and the teacher's queries do not depend on the share: made once; the student's rows are not
    # scored here, so the teacher's stand in for them
    judgements = heldout_judgements(cfg, tasks, load_triples(cfg.eval_file), FrozenDocuments(texts, taught))
    queries = _teacher_rows(SentenceTransformerEncoder(cfg.teacher, show_progress=False), judgements[0], "query")
    lexical = bm25_index(texts, where="the frozen index") if any(shares) else None  # built once for every share
    return {share: teacher_heldout_ndcg(queries, judgements, FrozenDocuments(
        texts, taught, teacher_embeddings=taught, teacher_bm25=share, lexical=lexical)) for share in shares}


def index_texts(tasks: list[RetrievalTask]) -> list[str]:
    """The distinct document texts of the ``tasks``' corpora, in order: the rows of a query adapter's frozen index."""
    return list(dict.fromkeys(document_text(d) for task in tasks for d in task.corpus.values()))


def frozen_documents(cfg: SFTConfig, tasks: list[RetrievalTask], policy: Policy, show_progress: bool) -> FrozenDocuments:
    """The frozen index of a query adapter's SFT: the corpora of ``index_tasks`` as the document model embeds them
    (and as the teacher does, when ``weights.distill`` is on)."""
    texts = index_texts(tasks)
    embeddings, _ = document_embeddings(f"searchr3:{policy.document_model}", texts, cfg.cache_dir, show_progress)
    taught = document_embeddings(cfg.teacher, texts, cfg.cache_dir, show_progress)[0] if cfg.weights.distill else None
    return FrozenDocuments(texts, embeddings, policy.model.device, taught, cfg.teacher_bm25)


def planned_steps(cfg: SFTConfig, n_triples: int) -> int:
    """``max_steps``, else the optimiser steps to the end of ``epochs`` passes less the ``skip_batches`` passed over."""
    if cfg.max_steps:
        return cfg.max_steps
    batches = cfg.epochs * math.ceil(n_triples / cfg.batch_size) - cfg.skip_batches
    if batches <= 0:
        raise UserError(f"skip_batches {cfg.skip_batches} leaves no batch of the {cfg.epochs} epoch(s) of "
                        f"{n_triples} triples; set max_steps or more epochs")
    return math.ceil(batches / cfg.grad_accum)


def batch_at(triples: list[Triple], index: int, batch_size: int, seed: int) -> list[Triple]:
    """The ``index``-th batch of a per-epoch shuffled order (deterministic, so resume continues exactly)."""
    per_epoch = math.ceil(len(triples) / batch_size)
    epoch, offset = divmod(index, per_epoch)
    order = list(range(len(triples)))
    random.Random(seed + epoch).shuffle(order)
    return [triples[i] for i in order[offset * batch_size : (offset + 1) * batch_size]]


def save_checkpoint(policy: Policy, optimizer, step: int, folder: Path, extra: dict | None = None) -> None:
    """Model, optimiser and step (and a stage's ``extra`` state) as whole tensors. Every process calls it (sharded
    state is gathered); process 0 replaces ``folder`` atomically."""
    model_state, optimizer_state = sharding.full_training_state(policy.model, optimizer)
    if distributed.is_main():
        state = {"model": model_state, "optimizer": optimizer_state, "step": step, **(extra or {})}
        atomic_write_folder(folder, lambda tmp: torch.save(state, tmp / "state.pt"))


def run_state(cfg, scheduler) -> dict:
    """What a checkpoint keeps besides weights and optimiser: the config it was trained with and the schedule."""
    return {"config": config_state(cfg), "scheduler": scheduler.state_dict()}


def load_schedule(scheduler, state: dict, step: int) -> None:
    """The schedule as the checkpoint left it (one written before schedules were kept: advanced ``step`` times)."""
    if "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    else:
        with warnings.catch_warnings():  # stepping a schedule without an optimiser step is what is meant here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                scheduler.step()


def load_checkpoint(folder: Path) -> dict | None:
    """The state ``save_checkpoint`` wrote to ``folder``, or None when there is none."""
    path = folder / "state.pt"
    return torch.load(path, weights_only=False) if path.exists() else None


def train_sft(cfg: SFTConfig, show_progress: bool = True) -> dict:
    """Train, checkpointing every ``save_every`` steps; an existing checkpoint is resumed. With an ``eval_file`` the
    held-out InfoNCE is measured every ``eval_every`` steps and ``final`` is the checkpoint where it was lowest.

    Launched with ``accelerate launch`` or ``torchrun``, each process takes an equal share of every global batch
    (``batch_size``), InfoNCE runs over the whole batch, gradients are averaged across processes, and process 0
    writes logs, checkpoints and models. With an accelerate FSDP config the model is sharded (``trainer.sharding``)."""
    plugin = sharding.fsdp_plugin()
    sharding.check_launch(cfg.train_layers, plugin)
    distributed.init_from_env()
    rank, size = distributed.rank_and_size()
    main = rank == 0
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    triples = training_triples(cfg)
    total_steps = planned_steps(cfg, len(triples))
    policy = Policy.from_config(cfg)
    teacher = load_teacher(cfg)
    if cfg.teacher_bm25 and not policy.query_adapter:
        raise UserError("teacher_bm25 needs a query adapter (BM25 scores every document of its frozen index)")
    tasks, index = [], None
    if policy.query_adapter:
        tasks = index_tasks(cfg)
        index = frozen_documents(cfg, tasks, policy, show_progress)
    if cfg.mask_judged:
        if index is None:
            raise UserError("mask_judged needs a query adapter (its frozen index and index_dirs' qrels)")
        index.judged = {text: {row for row, grade in rows.items() if grade > 0}
                        for text, rows in index_judgements(tasks, {t.query for t in triples}, index).items()}
    if plugin is not None:
        policy.shard(plugin)
    trainable = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(trainable, cfg, cfg.learning_rate, total_steps)
    checkpoint = out / "checkpoint"
    step = 0
    if (state := load_checkpoint(checkpoint)) is not None:
        check_resumed_config(state.get("config"), cfg, str(checkpoint))
        sharding.load_training_state(policy.model, optimizer, state["model"], state["optimizer"])
        load_schedule(scheduler, state, state["step"])
        step = state["step"]
    # every process evaluates (the same pairs, so a sharded model runs the same layers on each); process 0 logs
    heldout = load_triples(cfg.eval_file) if cfg.eval_file else None
    judgements = None
    if cfg.select_on == "heldout_ndcg_at_10":
        if index is None or not heldout:
            raise UserError("select_on heldout_ndcg_at_10 needs a query adapter (its frozen index) and an eval_file")
        judgements = heldout_judgements(cfg, tasks, heldout, index)
    measures = ["heldout_infonce"] + (["heldout_ndcg_at_10"] if judgements else [])
    evals = CSVLog(out / "heldout_log.csv", ["step", *measures]) if heldout and main else None
    if heldout and not distributed.broadcast_from_main(evals is not None and bool(evals.rows())):
        at_start = _heldout_measures(policy, heldout, cfg, index, judgements)
        if evals is not None:
            evals.append({"step": 0, **at_start})
    log = CSVLog(out / "loss_log.csv", COLUMNS) if main else None
    if log is not None:
        log.keep_steps_up_to(step)  # steps logged after the checkpoint run again
    for step in tqdm(range(step, total_steps), desc="sft", initial=step, total=total_steps,
                     disable=not show_progress or not main):
        policy.model.train()
        start, tokens, sums = time.perf_counter(), 0, {}
        for micro in range(cfg.grad_accum):
            batch = batch_at(triples, cfg.skip_batches + step * cfg.grad_accum + micro, cfg.batch_size, cfg.seed)
            terms, n_tokens = sft_losses(policy, collectives.shard_of(batch, rank, size), cfg, index, teacher)
            require_finite(terms["total"], f"sft step {step + 1}")
            (terms["total"] / cfg.grad_accum).backward()
            tokens += n_tokens
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item() / cfg.grad_accum
        policy.average_gradients(trainable)
        stepped = clip_and_step(trainable, optimizer, scheduler, cfg.max_grad_norm)
        sums = collectives.mean_across_ranks({**sums, "tokens": tokens})
        tokens_per_second = sums.pop("tokens") * size / (time.perf_counter() - start)
        if main:
            log.append({"step": step + 1, **sums, "tokens_per_second": tokens_per_second, **stepped})
        if heldout and ((step + 1) % (cfg.eval_every or total_steps) == 0 or step + 1 == total_steps):
            _evaluate_and_keep_best(policy, heldout, cfg, step + 1, evals, out / "final", index, judgements)
        if cfg.save_every and (step + 1) % cfg.save_every == 0:
            save_checkpoint(policy, optimizer, step + 1, checkpoint, run_state(cfg, scheduler))
        distributed.barrier()
    summary = {"steps": total_steps, "model": str(out / "final"), "log": str(out / "loss_log.csv")}
    save_checkpoint(policy, optimizer, total_steps, checkpoint, run_state(cfg, scheduler))
    if not heldout:
        policy.save(out / "final")
    if not main:
        return summary
    plot_log(log, out / "loss_plot.png")
    if evals is not None:
        for measure in measures:
            rows = [(int(r["step"]), float(r[measure])) for r in evals.rows()]
            best = max(rows[1:], key=lambda r: HELDOUT_SIGN[measure] * r[1])
            summary[measure] = {"at_start": rows[0][1], "at_end": rows[-1][1], "best": best[1], "best_step": best[0]}
        summary["selected_on"] = cfg.select_on
        if judgements and teacher is not None:
            summary["teacher_heldout_ndcg_at_10"] = teacher_heldout_ndcg(
                _teacher_rows(teacher, judgements[0], "query", index.embeddings.device), judgements, index)
        atomic_write_json(out / "eval.json", summary)
    return summary


def _heldout_measures(policy: Policy, heldout: list[Triple], cfg: SFTConfig, index: FrozenDocuments | None,
                      judgements: Judgements | None) -> dict[str, float]:
    measured = {"heldout_infonce": heldout_infonce(policy, heldout, cfg.temperature, index=index)}
    if judgements:
        measured["heldout_ndcg_at_10"] = heldout_ndcg(policy, judgements, index)
    return measured


def _evaluate_and_keep_best(policy: Policy, heldout: list[Triple], cfg: SFTConfig, step: int, evals: CSVLog | None,
                            final: Path, index: FrozenDocuments | None, judgements: Judgements | None) -> None:
    """The held-out measures at ``step``, logged by process 0 (``evals``); the model is saved to ``final`` when its
    ``select_on`` measure is the best after step 0 (the lowest InfoNCE, the highest nDCG). Every process calls it."""
    measured = _heldout_measures(policy, heldout, cfg, index, judgements)
    value, sign = measured[cfg.select_on], HELDOUT_SIGN[cfg.select_on]
    best = None
    if evals is not None:
        earlier = [float(r[cfg.select_on]) for r in evals.rows() if int(r["step"]) not in (0, step)]
        if not any(int(r["step"]) == step for r in evals.rows()):
            evals.append({"step": step, **measured})
        best = not earlier or sign * value > max(sign * e for e in earlier) or not final.exists()
    if distributed.broadcast_from_main(best):
        policy.save(final)
