"""Forward passes of a causal LM's decoder that read final-layer hidden states: batches returned left-padded (every
sequence ends at the last position), a shared prompt prefix run once, and the lower and upper layers apart (a frozen
lower part's states cached). The encoder and the trainer both read "the hidden state at the embed token" from here.

A batch runs through the decoder right-padded: a left-padded pad position comes before every real token, so causal
attention leaves it no key at all, and fused GPU kernels (sdpa on CUDA) turn such a row into NaN that reaches the real
tokens through its value; right-padded, every position sees at least the first token and no real token sees a pad."""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from functools import cache

import torch
from transformers import DynamicCache


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def as_left_padded(hidden: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Right-padded states [B, T, H] moved so that each row's ``lengths[i]`` states end at the last position; the
    positions before them are zero (differentiable: a gather)."""
    width = hidden.shape[1]
    lengths_t = torch.tensor(lengths, device=hidden.device)
    source = torch.arange(width, device=hidden.device)[None, :] - (width - lengths_t)[:, None]
    real = source >= 0
    moved = hidden.gather(1, source.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
    return moved * real[..., None].to(hidden.dtype)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token, so padding does not shift them."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def common_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading tokens every sequence shares."""
    first, n = sequences[0], min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences):
            return i
    return n


def padded_forward(model, sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Final-layer hidden states [B, T, H] of a batch, left-padded (zeros before each sequence), and its left-padded
    ids [B, T]; run right-padded, so positions start at 0 on every row."""
    ids, mask = right_pad(sequences, pad_id)
    hidden = model.base_model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).last_hidden_state
    return as_left_padded(hidden, [len(s) for s in sequences]), left_pad(sequences, pad_id)[0].to(model.device)


def last_hidden_states(model, sequences: list[list[int]], pad_id: int, share_prefix: bool = True) -> torch.Tensor:
    """Final-layer hidden state at each sequence's last token.

    The tokens every sequence starts with (the system prompt and the start of the user turn) are run once and their
    keys/values reused for the whole batch; the rest is left-padded after them, with positions that continue from the
    prefix and padding masked out, which gives the same states as running each sequence alone.
    """
    decoder = model.base_model
    prefix = common_prefix_length(sequences) - 1 if share_prefix and len(sequences) > 1 else 0
    if prefix < 2:  # nothing worth sharing (the last token is always computed per sequence)
        return padded_forward(model, sequences, pad_id)[0][:, -1, :]
    head = torch.tensor([sequences[0][:prefix]], device=model.device)
    kv = DynamicCache(config=model.config)
    cache_arg = _cache_argument(type(decoder))
    decoder(input_ids=head, use_cache=True, **{cache_arg: kv})
    kv.batch_repeat_interleave(len(sequences))
    ids, mask = left_pad([s[prefix:] for s in sequences], pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    full_mask = torch.cat([torch.ones(len(sequences), prefix, dtype=mask.dtype, device=mask.device), mask], dim=1)
    positions = prefix + position_ids(mask)
    out = decoder(input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True, **{cache_arg: kv})
    return out.last_hidden_state[:, -1, :]


@cache
def _cache_argument(decoder_class: type) -> str:
    """Transformers 5 names the KV-cache argument ``cache``; earlier versions ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


@contextmanager
def layers_only(decoder, layers: slice, final_norm: bool = True):
    """Run ``decoder`` through only ``decoder.layers[layers]`` (and its final norm only if ``final_norm``): the library's
    own forward then still builds the masks and rotary embeddings. Used to cache frozen lower layers' outputs."""
    saved_layers, saved_norm = decoder.layers, decoder.norm
    decoder.layers = torch.nn.ModuleList(list(saved_layers)[layers])
    if not final_norm:
        decoder.norm = torch.nn.Identity()
    try:
        yield decoder
    finally:
        decoder.layers, decoder.norm = saved_layers, saved_norm


@torch.no_grad()
def lower_hidden_states(model, sequences: list[list[int]], pad_id: int, n_layers: int) -> list[torch.Tensor]:
    """Each sequence's hidden states [len, H] after the first ``n_layers`` decoder layers (padding removed)."""
    ids, mask = right_pad(sequences, pad_id)
    with layers_only(model.base_model, slice(0, n_layers), final_norm=False) as decoder:
        hidden = decoder(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).last_hidden_state
    return [hidden[row, : len(seq)] for row, seq in enumerate(sequences)]


def upper_forward(model, states: list[torch.Tensor], n_lower: int) -> torch.Tensor:
    """Final-layer hidden states [B, T, H] from lower-layer states (``lower_hidden_states``), left-padded: the layers
    above ``n_lower`` and the final norm, run right-padded. ``upper_forward(lower_hidden_states(x, n), n)`` equals
    ``padded_forward(x)``."""
    width = max(len(s) for s in states)
    padded = states[0].new_zeros(len(states), width, states[0].shape[-1])
    mask = torch.zeros(len(states), width, dtype=torch.long, device=padded.device)
    for row, s in enumerate(states):
        padded[row, : len(s)] = s
        mask[row, : len(s)] = 1
    with layers_only(model.base_model, slice(n_lower, None)) as decoder:
        hidden = decoder(inputs_embeds=padded, attention_mask=mask).last_hidden_state
    return as_left_padded(hidden, [len(s) for s in states])
