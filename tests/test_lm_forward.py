"""The lm layer's forward passes never give a position an empty attention row (the cause of NaN with sdpa on CUDA),
checked on CPU with an attention kernel that, like CUDA's fused kernels, turns such a row into NaN."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from transformers import AttentionInterface, AttentionMaskInterface  # noqa: E402
from transformers.masking_utils import sdpa_mask  # noqa: E402

from searchr3_eval.models.lm.forward import (  # noqa: E402
    left_pad, lower_hidden_states, padded_forward, position_ids, upper_forward,
)
from tests.conftest import make_tiny_chat_model  # noqa: E402

SEQUENCES = [[5, 6, 7, 8, 9, 10, 11, 12], [5, 6, 7], [9, 8, 7, 6, 5]]


def strict_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """softmax(QK^T / sqrt(d)) V with masked keys at -inf: a row that masks every key is NaN."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query @ key.transpose(-1, -2) * (scaling or query.shape[-1] ** -0.5)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool \
            else scores + attention_mask
    return (scores.softmax(-1) @ value).transpose(1, 2).contiguous(), None


AttentionInterface.register("strict", strict_attention)
AttentionMaskInterface.register("strict", sdpa_mask)


@pytest.fixture(scope="module")
def models():
    eager, tokenizer = make_tiny_chat_model()
    strict, _ = make_tiny_chat_model()
    strict.load_state_dict(eager.state_dict())
    eager.set_attn_implementation("eager")
    strict.set_attn_implementation("strict")
    return eager, strict, tokenizer.pad_token_id


def alone(model, pad: int) -> list[torch.Tensor]:
    return [padded_forward(model, [s], pad)[0][0] for s in SEQUENCES]


def test_a_left_padded_decoder_run_is_nan_under_a_strict_kernel(models):
    """What the forward passes did before: a left-padded batch's pad rows attend to nothing, and their NaN reaches the
    short sequences' real tokens (the embed token included)."""
    _, strict, pad = models
    ids, mask = left_pad(SEQUENCES, pad)
    with torch.no_grad():
        hidden = strict.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
    assert torch.isnan(hidden[1, -1]).all() and torch.isfinite(hidden[0]).all()


def test_batched_forwards_are_finite_and_equal_each_sequence_alone(models):
    eager, strict, pad = models
    expected = alone(eager, pad)
    for model in (eager, strict):
        hidden, ids = padded_forward(model, SEQUENCES, pad)
        upper = upper_forward(model, lower_hidden_states(model, SEQUENCES, pad, 1), 1)
        for row, seq in enumerate(SEQUENCES):
            assert ids[row, -len(seq):].tolist() == seq
            for states in (hidden, upper):
                assert torch.isfinite(states).all()
                torch.testing.assert_close(states[row, -len(seq):], expected[row], atol=1e-5, rtol=1e-4)
                assert not states[row, : hidden.shape[1] - len(seq)].any()  # zeros before the sequence


def test_gradients_through_a_strict_kernel_are_finite(models):
    _, strict, pad = models
    strict.zero_grad()
    hidden, _ = padded_forward(strict, SEQUENCES, pad)
    hidden[:, -1].sum().backward()
    grads = [p.grad for p in strict.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
