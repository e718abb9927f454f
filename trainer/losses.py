"""The SFT loss terms: InfoNCE, triplet margin, score distillation, token KL and cross-entropy on the answer."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from searchr3_eval.errors import UserError


def info_nce(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Cosine InfoNCE: each query against every positive in the batch (in-batch) and all hard negatives."""
    candidates = positives if negatives is None or len(negatives) == 0 else torch.cat([positives, negatives])
    logits = F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


def triplet(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, margin - cos(q, p) + cos(q, n)) averaged over each query's hard negatives ([B, N, H])."""
    pos = F.cosine_similarity(queries, positives, dim=-1)[:, None]
    neg = F.cosine_similarity(queries[:, None, :], negatives, dim=-1)
    return F.relu(margin - pos + neg).mean()


def score_distillation(queries: torch.Tensor, candidates: torch.Tensor, teacher_queries: torch.Tensor,
                       teacher_candidates: torch.Tensor, temperature: float, teacher_temperature: float) -> torch.Tensor:
    """KL(teacher || student) between each query's softmax over the candidates' cosine scores, the teacher's from its
    own embeddings (sentence-transformers' DistillKLDivLoss over a batch): soft labels that need no judgement and
    rank the batch's unjudged relevant documents near the positive instead of against it."""
    student = F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T / temperature
    teacher = F.normalize(teacher_queries, dim=-1) @ F.normalize(teacher_candidates, dim=-1).T / teacher_temperature
    return logit_distillation(student, teacher)


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) of each row of [B, N] logits, averaged over the rows."""
    return F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True,
                    reduction="batchmean")


def min_max(scores: torch.Tensor) -> torch.Tensor:
    """Each row of [B, N] scores mapped onto [0, 1] (a row of equal scores: all 0), as fusion:linear normalises."""
    low = scores.min(dim=-1, keepdim=True).values
    return (scores - low) / (scores.max(dim=-1, keepdim=True).values - low).clamp_min(1e-12)


def token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(policy || reference) per token, averaged; both are [N, V] log-probabilities."""
    return (logprobs.exp() * (logprobs - ref_logprobs)).sum(-1).mean()


def answer_cross_entropy(logprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -logprobs.gather(1, targets[:, None]).mean()


def require_finite(loss: torch.Tensor, where: str) -> None:
    """Stop with one clear line when a loss is NaN or infinite, before it reaches the weights (checkpoints are kept)."""
    if not torch.isfinite(loss).all():
        raise UserError(f"{where}: the loss is {loss.item()}; training stopped, the last checkpoint is kept "
                        "(lower the learning rate, or try mixed_precision: no)")
