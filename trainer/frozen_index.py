"""The frozen document index of query-side training (``query_adapter: true``).

A Search-R3 model's documents are embedded once, exactly as the evaluation embeds them (``searchr3-eval run`` with
its default options: the same encoder, settings and embedding cache), and never change while a query adapter trains,
so a rank rewarded or a loss computed against this index is the one the evaluation gives, and evaluating a
checkpoint re-encodes only its queries.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from searchr3_eval import distributed
from searchr3_eval.cache import EmbeddingCache, cache_file
from searchr3_eval.errors import UserError
from searchr3_eval.metrics import Run
from searchr3_eval.models import ModelOptions, load_model, parse_model_spec
from searchr3_eval.models.bm25 import bm25_index, bm25_scores
from trainer.losses import logit_distillation, min_max


def document_embeddings(model: str, texts: list[str], cache_dir: str | None = None,
                        show_progress: bool = True) -> tuple[np.ndarray, float]:
    """[N, H] embeddings of ``texts`` as documents of the evaluation's ``model`` (a model spec, e.g.
    ``searchr3:<document model>`` or a distillation teacher's ``minilm``) under its default options, read from (and
    written to) the embedding cache in ``cache_dir`` (default: the evaluation's), and the seconds it took. Under
    several processes each encodes a share and all get the whole array."""
    main = distributed.is_main()
    cache = EmbeddingCache(cache_file(cache_dir)) if main else None
    start = time.perf_counter()
    encoder = load_model(parse_model_spec(model), ModelOptions(show_progress=show_progress), cache)
    vectors = distributed.broadcast_from_main(encoder.encode(texts, "document"))
    return vectors, time.perf_counter() - start


class FrozenDocuments:
    """The index as a tensor with each document text's row, for losses over the whole corpus; with a distillation
    teacher, the teacher's embeddings of the same documents beside it, and with ``teacher_bm25`` > 0 a BM25 index of
    the same texts whose scores take that share of the teacher's (``teacher_logits``); ``lexical``, that index built
    beforehand (``bm25_index`` of ``texts``), lets several indexes of one corpus share it."""

    def __init__(self, texts: list[str], embeddings: np.ndarray, device: torch.device | str = "cpu",
                 teacher_embeddings: np.ndarray | None = None, teacher_bm25: float = 0.0, lexical=None):
        self.row_of = {text: row for row, text in enumerate(texts)}
        # query text -> rows of the documents judged relevant to it; set to take them out of its InfoNCE's negatives
        self.judged: dict[str, set[int]] = {}
        self.embeddings = torch.from_numpy(np.ascontiguousarray(embeddings)).to(device)
        self.teacher_embeddings = None if teacher_embeddings is None else F.normalize(torch.from_numpy(
            np.ascontiguousarray(teacher_embeddings)).float(), dim=-1).to(device)
        self.teacher_bm25 = teacher_bm25
        self.lexical = None
        if teacher_bm25 > 0:
            self.lexical = lexical if lexical is not None else bm25_index(texts, where="the frozen index")

    def rows(self, positives: list[str], where: str) -> torch.Tensor:
        """The index row of each positive; every positive must be one of the index's documents."""
        missing = sum(p not in self.row_of for p in positives)
        if missing:
            raise UserError(f"{where}: {missing} positive(s) are not documents of the frozen index (index_dirs)")
        return torch.tensor([self.row_of[p] for p in positives], dtype=torch.long, device=self.embeddings.device)

    def info_nce(self, queries: torch.Tensor, rows: torch.Tensor, temperature: float,
                 texts: list[str] | None = None) -> torch.Tensor:
        """InfoNCE against the whole corpus; with the queries' ``texts``, each query's other ``judged`` documents are
        not among its negatives (a relevant document nobody sampled is not pushed away)."""
        masked = None
        if texts is not None and self.judged:
            pairs = [(q, r) for q, (text, own) in enumerate(zip(texts, rows.tolist()))
                     for r in self.judged.get(text, ()) if r != own]
            masked = torch.tensor(pairs, dtype=torch.long, device=rows.device).reshape(-1, 2)
        return corpus_info_nce(queries, self.embeddings, rows, temperature, masked)

    def top(self, queries: torch.Tensor, k: int = 100) -> Run:
        """The ``k`` best-scored rows of each query, as a pytrec_eval run keyed by query and row position."""
        return ranking(F.normalize(queries.float(), dim=-1) @ self.embeddings.T, k)

    def teacher_logits(self, teacher_queries: torch.Tensor, texts: list[str], teacher_temperature: float) -> torch.Tensor:
        """[B, N] teacher scores of the queries (their ``texts`` and the teacher's embeddings of them) against every
        document, over ``teacher_temperature``: the teacher's cosines, or with ``teacher_bm25`` = w the hybrid
        (1 - w) * min-max(cosines) + w * min-max(BM25 scores), per query over the whole index (fusion:linear's sum)."""
        scores = F.normalize(teacher_queries.float(), dim=-1) @ self.teacher_embeddings.T
        if self.lexical is not None:
            lexical = torch.from_numpy(bm25_scores(self.lexical, texts)).to(scores.device)
            scores = (1 - self.teacher_bm25) * min_max(scores) + self.teacher_bm25 * min_max(lexical)
        return scores / teacher_temperature

    def distillation(self, queries: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """KL(teacher || student) of each query's score distribution over the whole corpus: the teacher ranks every
        document, judged or not, so the soft labels cover all of a query's relevant documents."""
        student = F.normalize(queries.float(), dim=-1) @ self.embeddings.T / temperature
        return logit_distillation(student, teacher_logits)


def ranking(scores: torch.Tensor, k: int = 100) -> Run:
    """The ``k`` best of each row of [B, N] scores, as a pytrec_eval run keyed by query and row position."""
    best, rows = scores.topk(min(k, scores.shape[1]))
    return {str(q): {str(r): s for r, s in zip(rs.tolist(), ss.tolist())} for q, (rs, ss) in enumerate(zip(rows, best))}


def corpus_info_nce(queries: torch.Tensor, documents: torch.Tensor, rows: torch.Tensor, temperature: float,
                    masked: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine InfoNCE of each query against every document of the corpus ([N, H], unit rows); its positive at ``rows``;
    ``masked`` (query, row) pairs are left out of the softmax."""
    logits = F.normalize(queries.float(), dim=-1) @ documents.T / temperature
    if masked is not None and len(masked):
        logits = logits.index_put((masked[:, 0], masked[:, 1]), torch.tensor(float("-inf"), device=logits.device))
    return F.cross_entropy(logits, rows)
