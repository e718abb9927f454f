import numpy as np
import pytest
import torch

from searchr3_eval.cache import EmbeddingCache
from searchr3_eval.errors import UserError
from searchr3_eval.models.base_llm import LastTokenEncoder
from searchr3_eval.models.mteb_wrapper import MTEBEncoder
from searchr3_eval.models.searchr3 import EMBED_TOKEN, SearchR3Encoder

TEXTS = [
    "How many bolts in total does it take?",
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day at the market.",
    "Profit",
    "The cost of the house and repairs came out to 80,000+50,000=130,000. The answer is 70000.",
    "How many total meters does he run a week?",
]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False, batch_size=8)


def test_model_without_embed_token_is_rejected(tiny_model_dir):
    with pytest.raises(UserError, match="no <\\|embed_token\\|> token"):
        SearchR3Encoder.from_pretrained(str(tiny_model_dir))


def test_embeddings_have_hidden_size_and_unit_norm(encoder):
    vectors = encoder.encode(TEXTS, "document")
    assert vectors.shape == (5, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_hidden_state_is_read_at_the_embed_token_under_left_padding(encoder):
    short, long = TEXTS[2], TEXTS[1]
    ids = encoder.sequences([short], "query")[0]
    assert ids[-1] == encoder.embed_id == encoder.tokenizer.convert_tokens_to_ids(EMBED_TOKEN)
    with torch.inference_mode():
        hidden = encoder.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    expected = (hidden[ids.index(encoder.embed_id)] / hidden[-1].norm()).numpy()
    batch, _ = encoder.embed([long, short], "query")  # the short text is left-padded here
    assert len(encoder.sequences([long], "query")[0]) > len(ids)
    np.testing.assert_allclose(batch[1], expected, atol=1e-5)


def test_batch_size_does_not_change_embeddings(encoder):
    one = np.concatenate([encoder.embed([t], "document")[0] for t in TEXTS])
    together = encoder.embed(TEXTS, "document")[0]
    np.testing.assert_allclose(one, together, atol=1e-5)


def test_queries_and_documents_use_different_prompts(encoder):
    query, _ = encoder.embed([TEXTS[0]], "query")
    document, _ = encoder.embed([TEXTS[0]], "document")
    assert not np.allclose(query, document)


def test_left_truncation_keeps_the_embed_token(tiny_model_dir):
    short = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, max_length=160, show_progress=False)
    ids = short.sequences([" ".join(TEXTS * 10)], "document")[0]
    assert 150 <= len(ids) <= 160 and ids[-1] == short.embed_id
    short.max_length = 40
    with pytest.raises(UserError, match="leaves no room for text"):
        short.sequences(TEXTS[:1], "document")


def test_reasoning_text_is_generated_and_cached(tiny_model_dir, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    enc = SearchR3Encoder.from_pretrained(
        str(tiny_model_dir), add_token=True, reasoning="on", max_new_tokens=6, cache=cache, show_progress=False
    )
    first = enc.encode(TEXTS[:3], "query")
    reasoning = enc.last_stats.reasoning
    assert enc.last_stats.encoded == 3 and all(isinstance(r, str) for r in reasoning)
    seq = enc.sequences(TEXTS[:1], "query", reasoning[:1])[0]
    assert seq[-1] == enc.embed_id and len(seq) > len(enc.generation_prompts(TEXTS[:1], "query")[0])
    again = enc.encode(TEXTS[:3], "query")
    assert enc.last_stats.encoded == 0 and enc.last_stats.cached == 3
    assert enc.last_stats.reasoning == reasoning
    np.testing.assert_array_equal(first, again)
    enc.encode(TEXTS[:1], "document")  # documents do not reason with reasoning="on"
    assert enc.last_stats.reasoning == [None]


def test_cache_key_depends_on_settings(tiny_model_dir):
    a = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False)
    b = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, reasoning="all", show_progress=False)
    assert a.cache_key != b.cache_key


def test_vllm_backend_without_vllm_is_a_user_error(tiny_model_dir):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed")
    except ImportError:
        pass
    with pytest.raises(UserError, match="vllm"):
        SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, backend="vllm")


def test_mteb_protocol_accepts_lists_and_batches(encoder):
    wrapper = MTEBEncoder(encoder)
    as_list = wrapper.encode(TEXTS[:2], task_metadata=None, hf_split="test", hf_subset="default", prompt_type="query")
    batches = [{"text": TEXTS[:1]}, {"text": TEXTS[1:2]}]
    as_batches = wrapper.encode(batches, task_metadata=None, hf_split="test", hf_subset="default", prompt_type="query")
    np.testing.assert_allclose(as_list, as_batches, atol=1e-6)
    passages = wrapper.encode(TEXTS[:2], task_metadata=None, hf_split="test", hf_subset="default", prompt_type=None)
    assert not np.allclose(as_list, passages)
    assert wrapper.similarity(as_list, as_list).shape == (2, 2)


def test_base_llm_last_token_encoder(tiny_model_dir):
    enc = LastTokenEncoder(str(tiny_model_dir), show_progress=False)
    vectors = enc.encode(TEXTS, "query")
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    single = enc.encode(TEXTS[2:3], "query")
    np.testing.assert_allclose(single[0], vectors[2], atol=1e-5)


def test_direct_answer_length_matches_each_rendered_sequence(encoder):
    for text in TEXTS:
        prompt = encoder._render(encoder._messages(text, "document", False), None)
        assert len(encoder.sequences([text], "document")[0]) - len(prompt) == encoder.direct_answer_length("document")
