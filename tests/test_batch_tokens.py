"""--batch-tokens auto: the CPU's budget on a CPU, a share of free memory on a CUDA GPU (sized by the model's config)."""
import pytest

from searchr3_eval.commands import run_command
from searchr3_eval.models.encoding import AUTO_CPU_TOKENS, AUTO_MAX_TOKENS, auto_batch_tokens, transformer_bytes_per_token
from searchr3_eval.models.searchr3 import SearchR3Encoder
from tests.conftest import make_tiny_chat_model


def test_auto_budget_is_the_cpu_default_off_cuda_and_scales_with_free_gpu_memory():
    assert auto_batch_tokens("cpu", 34_000) == auto_batch_tokens("mps", 34_000) == AUTO_CPU_TOKENS
    assert auto_batch_tokens("cuda", 0, free_bytes=10**12) == AUTO_CPU_TOKENS  # unknown model size
    assert auto_batch_tokens("cuda:0", 40_000, free_bytes=1_600_000_000) == 10_000  # a quarter of free memory
    assert auto_batch_tokens("cuda", 40_000, free_bytes=10**12) == AUTO_MAX_TOKENS
    assert auto_batch_tokens("cuda", 40_000, free_bytes=10**6) == AUTO_CPU_TOKENS


def test_bytes_per_token_follow_the_config():
    model, _ = make_tiny_chat_model()
    c = model.config
    kv_dim = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    expected = 4 * (4 * c.hidden_size + 2 * c.intermediate_size + 2 * c.num_hidden_layers * kv_dim)
    assert transformer_bytes_per_token(c, 4) == expected
    assert transformer_bytes_per_token(c, 2) == expected // 2


def test_encoders_take_auto_or_a_number(tiny_model_dir):
    auto = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False)
    fixed = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False, batch_tokens=512)
    assert auto.token_budget == AUTO_CPU_TOKENS and fixed.token_budget == 512
    assert auto.bytes_per_token() == transformer_bytes_per_token(auto.model.config, 4)


@pytest.mark.parametrize("value", ["lots", "1.5"])
def test_a_bad_batch_tokens_flag_is_one_line(value, capsys):
    with pytest.raises(SystemExit):
        run_command(["run", "--batch-tokens", value])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"argument --batch-tokens: auto or a whole number, not {value!r}")
