"""FSDP2 for the trainer (SFT and GRPO), switched on by ``accelerate launch`` with an FSDP config (``distributed_type: FSDP`` and
``fsdp_version: 2``, or ``--use_fsdp --fsdp_version 2``): every process holds a shard of each parameter, gradient and
optimiser state. The layout is accelerate's (``fsdp2_prepare_model``): each decoder layer is a unit, the input embeddings
another, the final norm and output embeddings (with tied input embeddings) a tail unit, then the root; so the
trainer's forwards, which call the decoder and the output head directly, gather each unit's weights as they run.
Settings honoured from the config: ``reshard_after_forward`` and ``offload_params``. Every process must run each unit
equally often (the trainer's ``Policy`` sees to it). Checkpoints and saved models hold full (unsharded) tensors, so a
run can be resumed or evaluated with any number of processes."""
from __future__ import annotations

import os

import torch

from searchr3_eval.errors import UserError

STATE_OPTIONS = {"full_state_dict": True, "cpu_offload": True}  # whole tensors, on process 0 only


def fsdp_plugin():
    """Accelerate's FSDP settings when the launcher asked for FSDP across several processes, else None."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin()


def check_launch(train_layers: int | None, plugin) -> None:
    """One clear line for a launch this trainer cannot honour, before any model is loaded."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise UserError("DeepSpeed is not supported: launch with an FSDP config (fsdp_version: 2) or a multi-GPU one")
    if plugin is None:
        return
    if plugin.fsdp_version != 2:
        raise UserError(f"FSDP version {plugin.fsdp_version} is not supported: set fsdp_version: 2 in the accelerate "
                        "config (the trainer calls the decoder's layers directly, which FSDP1's flat parameters forbid)")
    if train_layers:
        raise UserError("train_layers is not supported with FSDP: each process caches the frozen layers' outputs of its "
                        "own sequences, which sharded layers cannot compute alone; remove train_layers or launch "
                        "without FSDP")
    from torch.distributed.fsdp import CPUOffloadPolicy

    if isinstance(plugin.cpu_offload, CPUOffloadPolicy) and not torch.cuda.is_available():
        raise UserError("fsdp_offload_params moves weights from a GPU to the CPU: there is no GPU here, set it to false")
    if plugin.activation_checkpointing:
        raise UserError("FSDP activation checkpointing is not supported: set fsdp_activation_checkpointing: false")


def shard(model: torch.nn.Module, plugin) -> None:
    """Shard ``model`` in place across the process group, as accelerate's ``fsdp2_prepare_model`` lays it out."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    settings = {"reshard_after_forward": plugin.reshard_after_forward, "offload_policy": plugin.cpu_offload}
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in causal_lm.base_model.layers:
        fully_shard(layer, **settings)
    embed, head = causal_lm.get_input_embeddings(), causal_lm.get_output_embeddings()
    tied = head is not None and embed.weight is head.weight
    if not tied:
        fully_shard(embed, **settings)
    tail = [causal_lm.base_model.norm, *([embed] if tied else []), *([head] if head is not None else [])]
    # a trained model's tail runs again at the forward's end and first in backward: kept gathered (as accelerate does)
    trains = any(p.requires_grad for p in model.parameters())
    fully_shard(tail, **{**settings, "reshard_after_forward": plugin.reshard_after_forward and not trains})
    fully_shard(model, offload_policy=plugin.cpu_offload)  # the root: torch's own choice of resharding
    with torch.no_grad():  # FSDP picks its root at the first forward: the whole model's, before any direct call
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=causal_lm.device))
    for module in model.modules():  # that forward left the tail gathered: an optimiser created next must see shards
        if isinstance(module, FSDPModule):
            module.reshard()


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on process 0 (gathered from the shards under FSDP); empty on the others. Every
    process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(**STATE_OPTIONS))


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def full_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The trainable parameters' state and the optimiser's (keyed by parameter name) on process 0; every process must
    call it. Frozen weights are left out: a resume or an export loads them from the run's ``model`` again (a LoRA
    run's checkpoint is megabytes, not the whole model)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=StateDictOptions(**STATE_OPTIONS))
    trainable = trainable_names(model)
    return {k: v for k, v in model_state.items() if k in trainable}, optimizer_state


def load_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                        optimizer_state: dict) -> None:
    """Load what ``full_training_state`` returned into a model (sharded or not) and its optimiser; also a checkpoint
    written before checkpoints were gathered, whose optimiser state is ``optimizer.state_dict()``'s (by position)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if all(isinstance(i, int) for group in optimizer_state["param_groups"] for i in group["params"]):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    check_trainable(model, model_state)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True, strict=False))


def load_model_state(model: torch.nn.Module, model_state: dict) -> None:
    """Load the model part of what ``full_training_state`` returned (no optimiser: exporting a checkpoint)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    check_trainable(model, model_state)
    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True, strict=False))


def check_trainable(model: torch.nn.Module, model_state: dict) -> None:
    """A checkpoint must hold every parameter the run trains (it may hold the frozen ones too, as older ones do)."""
    missing = trainable_names(model) - model_state.keys()
    if missing:
        raise UserError(f"the checkpoint lacks {len(missing)} trained parameter(s) of this run's model, e.g. "
                        f"{sorted(missing)[0]}: it was written for another model or trainer setting")
