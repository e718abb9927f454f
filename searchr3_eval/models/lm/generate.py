"""Generating an analysis before the embed token: batched greedy or sampled generation (transformers, or vLLM on a
GPU), ending at the embed token, at the end of the turn, or once the model has written the direct phrase (the
trained answer ends "<analysis>. The embedding is <|embed_token|>", so only the token may follow it)."""
from __future__ import annotations

import tempfile

import torch

from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.forward import left_pad


def make_generator(backend: str, model, tokenizer, embed_id: int, max_model_len: int, direct_answer: str):
    """A callable (prompt token ids, max_new_tokens) -> analyses, for the chosen backend."""
    if backend == "transformers":
        return TransformersGenerator(model, tokenizer, embed_id, direct_answer)
    if backend == "vllm":
        return VLLMGenerator(model, tokenizer, embed_id, max_model_len, direct_answer)
    raise UserError(f"unknown generation backend {backend!r}; use transformers or vllm")


def stop_token_ids(tokenizer, embed_id: int) -> list[int]:
    """Tokens that end an analysis: the embed token, end of sequence, end of turn."""
    stops = {embed_id, tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return sorted(i for i in stops if isinstance(i, int) and i != tokenizer.unk_token_id)


def direct_phrase(direct_answer: str) -> str:
    """The words of the direct answer before the embed token ("The embedding is")."""
    return direct_answer.strip()


def generation_stops(tokenizer, stop_ids: list[int], phrase: str) -> dict:
    """``generate`` keyword arguments that end an analysis: the stop tokens, and the direct phrase as a stop string."""
    return {"eos_token_id": stop_ids, **({"stop_strings": [phrase], "tokenizer": tokenizer} if phrase else {})}


def analysis_length(tokenizer, tokens: list[int], stop_ids: list[int], embed_id: int, phrase: str) -> tuple[int, bool]:
    """Where a generated answer's analysis ends: (its number of tokens, whether the answer ended as trained). It ends
    before the first stop token, or after the tokens that complete ``phrase`` (the direct phrase, which only the embed
    token may follow); "ended as trained" is the embed token or the phrase, not the end of the turn or the length cap."""
    for n, token in enumerate(tokens):
        if token in stop_ids:
            return n, token == embed_id
        if phrase and phrase in tokenizer.decode(tokens[: n + 1], skip_special_tokens=True):
            return n + 1, True
    return len(tokens), False


class TransformersGenerator:
    """Greedy batched generation on a left-padded batch; stops at the embed token, the end of the turn or the direct
    phrase."""

    def __init__(self, model, tokenizer, embed_id: int, direct_answer: str):
        self.model, self.tokenizer, self.embed_id = model, tokenizer, embed_id
        self.stop_ids = stop_token_ids(tokenizer, embed_id)
        self.phrase = direct_phrase(direct_answer)

    @torch.inference_mode()
    def __call__(self, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        out = self.model.generate(
            input_ids=ids.to(self.model.device),
            attention_mask=mask.to(self.model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            **generation_stops(self.tokenizer, self.stop_ids, self.phrase),
        )
        return self._analyses(out[:, ids.shape[1] :].tolist())

    @torch.inference_mode()
    def sample(self, prompts: list[list[int]], max_new_tokens: int, samples: int, temperature: float,
               seed: int) -> list[list[str]]:
        """``samples`` analyses of each prompt, sampled at ``temperature`` from ``seed``."""
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
            max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
            num_return_sequences=samples, pad_token_id=self.tokenizer.pad_token_id,
            **generation_stops(self.tokenizer, self.stop_ids, self.phrase),
        )
        analyses = self._analyses(out[:, ids.shape[1] :].tolist())
        return [analyses[i : i + samples] for i in range(0, len(analyses), samples)]

    def _analyses(self, rows: list[list[int]]) -> list[str]:
        analyses = []
        for row in rows:
            cut, _ = analysis_length(self.tokenizer, row, self.stop_ids, self.embed_id, self.phrase)
            analyses.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return analyses


VLLM_GPU_MEMORY_SHARE = 0.5  # the transformers model that reads the embeddings shares the GPU


def vllm_engine_args(folder: str, device: str, dtype: str, max_model_len: int) -> dict:
    """``vllm.LLM`` keyword arguments for the model saved in ``folder``; a ``UserError`` where vLLM cannot run."""
    if not device.startswith("cuda"):
        raise UserError(f"the vllm backend generates on a CUDA GPU, and this run's device is {device} "
                        "(use --backend transformers)")
    if device not in ("cuda", "cuda:0"):
        raise UserError(f"vLLM generates on the first visible GPU: instead of --device {device}, select the GPU with "
                        f"CUDA_VISIBLE_DEVICES={device.removeprefix('cuda:')} and --device cuda")
    return {"model": folder, "tokenizer": folder, "dtype": dtype, "max_model_len": max_model_len, "seed": 0,
            "gpu_memory_utilization": VLLM_GPU_MEMORY_SHARE}


def vllm_sampling_args(max_new_tokens: int, stop_ids: list[int], phrase: str) -> dict:
    """``vllm.SamplingParams`` keyword arguments: greedy, ending where the transformers generator ends (the direct
    phrase kept in the analysis)."""
    return {"max_tokens": max_new_tokens, "temperature": 0.0, "stop_token_ids": stop_ids, "skip_special_tokens": True,
            "stop": [phrase] if phrase else None, "include_stop_str_in_output": True}


class VLLMGenerator:
    """Generation with vLLM (GPU); the embedding itself is still read with transformers. vLLM loads the weights the
    embedding pass uses (a merged adapter, an added embed token, a de-quantized GGUF), saved to a temporary folder."""

    def __init__(self, model, tokenizer, embed_id: int, max_model_len: int, direct_answer: str):
        try:
            import vllm  # optional (GPU only): imported only when this backend is chosen
        except ImportError as exc:
            raise UserError("the vllm backend needs vLLM: pip install 'searchr3-eval[vllm]' (GPU only)") from exc
        dtype = str(model.dtype).removeprefix("torch.")
        self.folder = tempfile.TemporaryDirectory(prefix="searchr3-vllm-")
        engine = vllm_engine_args(self.folder.name, str(model.device), dtype, max_model_len)
        model.save_pretrained(self.folder.name)
        tokenizer.save_pretrained(self.folder.name)
        self.vllm, self.llm = vllm, vllm.LLM(**engine)
        self.stop_ids, self.phrase = stop_token_ids(tokenizer, embed_id), direct_phrase(direct_answer)

    def __call__(self, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        return [row[0] for row in self.sample(prompts, max_new_tokens, 1, 0.0, 0)]

    def sample(self, prompts: list[list[int]], max_new_tokens: int, samples: int, temperature: float,
               seed: int) -> list[list[str]]:
        args = vllm_sampling_args(max_new_tokens, self.stop_ids, self.phrase)
        params = self.vllm.SamplingParams(**{**args, "n": samples, "temperature": temperature, "seed": seed})
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [[c.text.strip() for c in o.outputs] for o in outputs]
