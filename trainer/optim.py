"""The optimiser, its learning-rate schedule and gradient clipping, shared by SFT and GRPO; and the check that a
resumed run has the config its checkpoint was written with (nanoGPT keeps its config in every checkpoint)."""
from __future__ import annotations

import logging
from dataclasses import MISSING, asdict, fields, is_dataclass
from typing import Any

import torch
from transformers import get_scheduler

from searchr3_eval.errors import UserError
from trainer.config import RunConfig

log = logging.getLogger(__name__)
# what a resumed run may change: how long it runs and how often it saves, evaluates or audits
RESUMABLE_CHANGES = {"steps", "max_steps", "epochs", "save_every", "eval_every", "audit_every", "audit_queries"}


def make_optimizer(params: list[torch.nn.Parameter], cfg: RunConfig, learning_rate: float, total_steps: int):
    """AdamW and its schedule (``cfg.lr_schedule`` over ``total_steps`` after ``cfg.warmup_steps``)."""
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    name = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    return optimizer, scheduler


def clip_and_step(params: list[torch.nn.Parameter], optimizer, scheduler, max_grad_norm: float | None) -> dict[str, float]:
    """Clip the (already averaged) gradients to ``max_grad_norm`` (none: measure only), step the optimiser and the
    schedule; the learning rate used and the gradient norm before clipping, for the log."""
    limit = float("inf") if max_grad_norm is None else max_grad_norm
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"lr": lr, "grad_norm": float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)}


def config_state(cfg: RunConfig) -> dict[str, Any]:
    return asdict(cfg)


def _defaults(cfg: RunConfig) -> dict[str, Any]:
    """Each setting's default, as ``config_state`` writes it."""
    found = {}
    for f in fields(cfg):
        if f.default is not MISSING or f.default_factory is not MISSING:
            value = f.default if f.default is not MISSING else f.default_factory()
            found[f.name] = asdict(value) if is_dataclass(value) else value
    return found


def check_resumed_config(saved: dict[str, Any] | None, cfg: RunConfig, where: str) -> None:
    """Refuse to resume a checkpoint under a config that changes the run (say what changed); changes in length and
    bookkeeping are logged. A checkpoint written before configs were kept resumes as it is; one written before a
    setting existed resumes where that setting has its default (the run it made)."""
    if saved is None:
        log.warning("%s holds no config (written by an older version); resuming without checking it", where)
        return
    current = config_state(cfg)
    saved = _defaults(cfg) | saved
    changed = {k for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
    if changed - RESUMABLE_CHANGES:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(changed - RESUMABLE_CHANGES))
        raise UserError(f"{where} was written with another config ({details}); restore those values, or use a new "
                        "output_dir")
    if changed:
        log.warning("resuming %s with %s", where, ", ".join(f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(changed)))
