"""The trainable policy: a causal LM with the embed token (optionally LoRA) and grad-enabled forwards."""
from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from searchr3_eval import distributed
from searchr3_eval.atomic import atomic_write, atomic_write_folder
from searchr3_eval.errors import UserError
from searchr3_eval.models.encoding import plan_batches
from searchr3_eval.models.lm.device import check_bf16_on, cpu_has_native_bf16, resolve_device
from searchr3_eval.models.lm.forward import left_pad, lower_hidden_states, padded_forward, upper_forward
from searchr3_eval.models.lm.generate import stop_token_ids
from searchr3_eval.models.lm.load import load_adapter, load_causal_lm
from searchr3_eval.models.lm.locate import document_model_of, is_adapter, packaged_name, read_manifest, shipped_model
from searchr3_eval.models.lm.prompt_format import (
    EMBED_TOKEN, PromptFormat, add_embed_token, embed_token_id, resolve_prompts, trained_preset,
)
from searchr3_eval.models.lm.save import save_adapter
from trainer import collectives, sharding
from trainer.config import RunConfig


REFERENCE_ADAPTER = "reference"


def resolve_mixed_precision(mode: str, device: str) -> bool:
    """``auto``: bf16 autocast where the CPU computes bf16 natively, or on a bf16-capable GPU."""
    if mode == "auto":
        if device.startswith("cuda"):
            return torch.cuda.is_bf16_supported()
        return device == "cpu" and cpu_has_native_bf16()
    if mode == "bf16":
        check_bf16_on(device)
    return mode == "bf16"


@dataclass
class Forward:
    embeddings: torch.Tensor  # [B, H], L2-normalised hidden state at the last (embed) token
    hidden: torch.Tensor  # [B, T, H] final-layer hidden states
    ids: torch.Tensor  # [B, T] left-padded input ids


class Policy:
    """Holds model, tokenizer, the prompt format the evaluation's encoder uses and the frozen reference."""

    def __init__(self, model_path: str, *, lora: bool = False, lora_r: int = 8, lora_alpha: int = 16,
                 train_layers: int | None = None, max_length: int = 256, max_new_tokens: int = 32,
                 dtype: str = "float32", mixed_precision: str = "no", attn_implementation: str = "auto",
                 device: str = "auto", prompts: str | None = None, query_adapter: bool = False):
        """``query_adapter``: a new LoRA over the Search-R3 model ``model_path`` (merged), saved as a query adapter
        (``searchr3_eval.models.lm.locate``): what the query side trains against that model's frozen documents; a query
        adapter given as ``model_path`` is trained further over its own document model. A saved LoRA adapter on fewer
        decoder layers than ``train_layers`` grows to them (``_grown``)."""
        device = resolve_device(device)
        if query_adapter and not lora:
            raise UserError("query_adapter trains a LoRA adapter: set lora: true")
        self.prompt_preset = prompts or trained_preset(model_path)  # saved with the adapter: the evaluator's default
        if attn_implementation == "auto":
            # eager: faster than sdpa for training on CPU (benchmarks/bench_sft_speed.py); sdpa on a GPU, where the
            # forwards' right padding (lm.forward) leaves no attention row empty (left-padded, an H200 gave NaN
            # weights after 4 SFT steps)
            attn_implementation = "sdpa" if device.startswith("cuda") else "eager"
        if (shipped := shipped_model(model_path)) is not None and document_model_of(shipped):
            model_path = str(shipped)  # a packaged query adapter named as it is evaluated (searchr3:<name>)
        continued_query_adapter = document_model_of(model_path)  # a query adapter trains on as one
        new_query_adapter = query_adapter and continued_query_adapter is None
        self.reference_adapter = False
        self.query_adapter = query_adapter or continued_query_adapter is not None
        # the Search-R3 model whose documents a query adapter is trained against (its base)
        self.document_model = continued_query_adapter or packaged_name(model_path)
        if is_adapter(model_path) and not new_query_adapter:  # a saved adapter: keep training it or its merged weights
            manifest = read_manifest(model_path)
            self.base, self.base_vocab_size = manifest["base"], manifest["base_vocab_size"]
            model, tokenizer = load_adapter(model_path, dtype, attn_implementation, device, trainable=lora)
            if lora and train_layers:
                model = self._grown(model, train_layers)
            if lora:  # the reference is the starting adapter, not the base: a frozen second copy of it
                model.load_adapter(str(model_path), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
                self.reference_adapter = True
        else:
            self.base = self.document_model if new_query_adapter else model_path
            model, tokenizer, _, _ = load_causal_lm(model_path, dtype, attn_implementation, device)
            self.base_vocab_size = len(tokenizer)
            if embed_token_id(tokenizer) is None:
                if new_query_adapter:
                    raise UserError(f"query_adapter: {model_path} is not a Search-R3 model (it has no {EMBED_TOKEN})")
                add_embed_token(model, tokenizer)
            if lora:
                from peft import LoraConfig, get_peft_model

                decoder_layers = self._causal_lm(model).base_model.layers
                linear = sorted({name.rsplit(".", 1)[-1] for name, module in decoder_layers.named_modules()
                                 if isinstance(module, torch.nn.Linear)})  # every linear layer of the decoder
                top = list(range(len(decoder_layers) - train_layers, len(decoder_layers))) if train_layers else None
                model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=linear,
                                                         layers_to_transform=top))
        self.bf16_autocast = resolve_mixed_precision(mixed_precision, device)
        self.lora, self.sharded = lora, False
        self.frozen_layers = self._freeze_below_top(model, train_layers) if train_layers else 0
        self.trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}
        self.lower_cache = LowerLayerCache(self._causal_lm(model), tokenizer.pad_token_id, self.frozen_layers,
                                           self.autocast) if self.frozen_layers else None
        # the reference is the model with its adapters disabled (LoRA), else a frozen copy
        self.reference = None if lora else copy.deepcopy(model).eval().requires_grad_(False)
        self.model, self.tokenizer = model, tokenizer
        self.format = PromptFormat(tokenizer, resolve_prompts(self.prompt_preset), max_length, max_new_tokens)
        self.embed_id = self.format.embed_id
        self.stop_ids = stop_token_ids(tokenizer, self.embed_id)

    @classmethod
    def from_config(cls, cfg: RunConfig, **settings) -> Policy:
        """The policy a stage's config describes (``settings``: the stage's own, e.g. ``max_new_tokens``)."""
        return cls(cfg.model, lora=cfg.lora, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, train_layers=cfg.train_layers,
                   max_length=cfg.max_length, dtype=cfg.dtype, mixed_precision=cfg.mixed_precision,
                   attn_implementation=cfg.attn_implementation, device=cfg.device, prompts=cfg.prompts,
                   query_adapter=cfg.query_adapter, **settings)

    @classmethod
    def _grown(cls, model, train_layers: int):
        """A loaded LoRA adapter spread over the top ``train_layers`` decoder layers where it covers fewer (more
        capacity, same rank): its factors in the layers it has, LoRA's zero update in the layers added, so the model
        starts as the adapter's."""
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        config = model.peft_config["default"]
        n_layers = len(cls._causal_lm(model).base_model.layers)
        covered = config.layers_to_transform
        covered = [covered] if isinstance(covered, int) else covered
        if covered is None or len(covered) >= train_layers or train_layers > n_layers:
            return model  # (train_layers beyond the model is refused by _freeze_below_top)
        state = get_peft_model_state_dict(model)
        config = copy.deepcopy(config)
        config.layers_to_transform = list(range(n_layers - train_layers, n_layers))
        grown = get_peft_model(model.unload(), config)
        unexpected = set_peft_model_state_dict(grown, state).unexpected_keys
        if unexpected:
            raise UserError(f"the adapter's factors do not fit its grown form: {sorted(unexpected)[:3]}")
        return grown

    def _freeze_below_top(self, model, train_layers: int) -> int:
        """Train only the top ``train_layers`` decoder layers (their LoRA adapters, or their weights and the final
        norm); everything below, embeddings included, is frozen, so its outputs can be cached. Returns how many layers
        are frozen."""
        decoder = self._causal_lm(model).base_model
        frozen = len(decoder.layers) - train_layers
        if frozen < 0:
            raise UserError(f"train_layers {train_layers} is more than the model's {len(decoder.layers)} layers")
        if self.lora:
            decoder.layers[:frozen].requires_grad_(False)  # a loaded adapter may also have lower-layer weights
        else:
            model.requires_grad_(False)
            decoder.layers[frozen:].requires_grad_(True)
            decoder.norm.requires_grad_(True)
        return frozen

    def shard(self, plugin) -> None:
        """Shard the model (and a full fine-tune's frozen reference) across the processes with FSDP2
        (``trainer.sharding``); create the optimiser after this."""
        sharding.shard(self.model, plugin)
        if self.reference is not None:
            sharding.shard(self.reference, plugin)
        self.sharded = True

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """The mean of each gradient across processes (DDP's arithmetic), unless FSDP has reduced them already."""
        if not self.sharded:
            collectives.average_gradients(parameters)

    @staticmethod
    def _causal_lm(model):
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def autocast(self):
        """bf16 autocast for forwards when enabled (weights and optimiser state stay float32)."""
        if not self.bf16_autocast:
            return nullcontext()
        return torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16)

    @contextmanager
    def reference_model(self):
        """The frozen reference: the starting adapter (LoRA continued from a saved adapter), the base weights (a new
        LoRA, disabled) or the frozen copy (full fine-tune)."""
        if self.reference_adapter:
            self.model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            try:
                yield self.model
            finally:
                self.model.set_adapter("default")
                for name, p in self.model.named_parameters():  # set_adapter re-enables every default weight
                    p.requires_grad_(name in self.trainable_names)
        elif self.lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.reference

    def forward(self, sequences: list[list[int]], model=None, keep_lower: bool = True) -> Forward:
        """Final hidden states and embeddings of a left-padded batch. With ``train_layers`` only the top layers run;
        the frozen layers' outputs come from the cache (``keep_lower=False``: computed without keeping them, for
        one-off sequences such as sampled rollouts)."""
        causal_lm, pad = self._causal_lm(model or self.model), self.tokenizer.pad_token_id
        with self.autocast():
            if self.lower_cache is not None:
                hidden = upper_forward(causal_lm, self.lower_cache(sequences, keep_lower), self.frozen_layers)
                ids = left_pad(sequences, pad)[0].to(hidden.device)
            else:
                hidden, ids = padded_forward(causal_lm, sequences, pad)
        return Forward(F.normalize(hidden[:, -1].float(), dim=-1), hidden, ids)

    def answer_forward(self, sequences: list[list[int]], answers: list[int], model=None,
                       batch_tokens: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings [B, H] (in input order) and the log-probabilities [N, V] and targets [N] of each sequence's last
        ``answers[i]`` tokens. Sequences run longest first in chunks of at most ``batch_tokens`` padded tokens, so a
        short query is never padded to a long document's length (the graph of every chunk is kept for backward).
        Sharded, they run as one chunk: every process must run each layer as often as the others."""
        rows: dict[int, torch.Tensor] = {}
        logprobs, targets = [], []
        limit = len(sequences) * max(map(len, sequences)) if self.sharded else batch_tokens
        for chunk in plan_batches([len(s) for s in sequences], len(sequences), limit):
            seqs = [sequences[i] for i in chunk]
            out = self.forward(seqs, model)
            lp, tg = self.span_logprobs(out, self.last_tokens_mask(seqs, [answers[i] for i in chunk]), model)
            logprobs.append(lp)
            targets.append(tg)
            rows.update(zip(chunk, out.embeddings))
        return torch.stack([rows[i] for i in range(len(sequences))]), torch.cat(logprobs), torch.cat(targets)

    @torch.no_grad()
    def embed(self, texts: list[str], kind: str, max_length: int | None = None, batch_tokens: int = 4096) -> torch.Tensor:
        """Direct-mode embeddings [N, H] (float32) through the training forward (autocast, lower-layer cache), longest
        first in chunks of ``batch_tokens`` padded tokens. Sharded, every process runs as many chunks as the process
        with the most (an empty one runs a single padding token): each must run every layer equally often."""
        self.model.eval()
        sequences = self.direct_sequences(texts, kind, max_length)[0]
        chunks = plan_batches([len(s) for s in sequences], len(sequences), batch_tokens)
        if self.sharded:
            chunks += [[]] * (max(collectives.all_gather_list([len(chunks)])) - len(chunks))
        rows: dict[int, torch.Tensor] = {}
        for chunk in chunks:
            out = self.forward([sequences[i] for i in chunk] or [[self.tokenizer.pad_token_id]])
            rows.update(zip(chunk, out.embeddings))
        if not sequences:
            return torch.zeros(0, self.model.config.hidden_size, device=self.model.device)
        return torch.stack([rows[i] for i in range(len(sequences))])

    def span_logprobs(self, out: Forward, span: torch.Tensor, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities [N, V] and targets [N] of the tokens where ``span`` ([B, T] bool) is true."""
        head = self._causal_lm(model or self.model).get_output_embeddings()
        target_mask = span[:, 1:]
        with self.autocast():
            logits = head(out.hidden[:, :-1][target_mask])
        return logits.float().log_softmax(-1), out.ids[:, 1:][target_mask]

    def last_tokens_mask(self, sequences: list[list[int]], counts: list[int]) -> torch.Tensor:
        """Mask of the last ``counts[i]`` tokens of each (left-padded) sequence."""
        width = max(len(s) for s in sequences)
        mask = torch.zeros(len(sequences), width, dtype=torch.bool, device=self.model.device)
        for row, n in enumerate(counts):
            if n:
                mask[row, width - n :] = True
        return mask

    def direct_sequences(self, texts: list[str], kind: str, max_length: int | None = None) -> tuple[list[list[int]], list[int]]:
        """Direct-mode sequences (capped at ``max_length``) and the length of each one's answer (phrase + embed token)."""
        sequences = self.format.sequences(texts, kind, max_length=max_length)
        return sequences, [self.format.direct_answer_length(kind)] * len(texts)

    def reasoning_sequences(self, texts: list[str], analyses: list[str], kind: str, max_length: int | None = None,
                            lead: str = "") -> tuple[list[list[int]], list[int]]:
        """Reasoning-format sequences as the model should write them (generation stops at the embed token): ``lead``
        and the analysis (cut to fit ``max_new_tokens``), the direct phrase, the token; and each one's answer length."""
        tokenize = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        phrase = self.format.prompts.direct_answer.strip()
        budget = self.format.max_new_tokens - len(tokenize(f"{lead}. {phrase} {EMBED_TOKEN}"))
        answers = [f"{lead}{self.tokenizer.decode(tokenize(a.strip())[:budget]).rstrip('.')}. {phrase}" for a in analyses]
        sequences = self.format.sequences(texts, kind, analyses=answers, max_length=max_length)
        lengths = [len(tokenize(f"{a} {EMBED_TOKEN}")) for a in answers]
        return sequences, [min(n, len(s) - 1) for n, s in zip(lengths, sequences)]

    def save(self, folder: Path) -> None:
        """A LoRA policy is saved as a small adapter over its base (``searchr3_eval.models.lm.locate``), with its prompt
        preset; a fully fine-tuned one as a Hugging Face folder with its tokenizer (which records no preset: evaluate
        it with ``--prompts`` when it was trained with another than paper). Every process calls it (sharded weights
        are gathered); process 0 replaces ``folder`` atomically."""
        state = sharding.full_model_state(self.model)
        if not distributed.is_main():
            return

        def write(tmp: Path) -> None:
            if self.lora:
                save_adapter(self.model, tmp, self.base, self.base_vocab_size, self.prompt_preset, state,
                             "query" if self.query_adapter else None)
            else:  # a tied weight once, as save_pretrained keeps it (gathered copies no longer share memory)
                tied = ({n for n, _ in self.model.named_parameters(remove_duplicate=False)}
                        - {n for n, _ in self.model.named_parameters()})
                self.model.save_pretrained(tmp, state_dict={k: v for k, v in state.items() if k not in tied})
                self.tokenizer.save_pretrained(tmp)

        atomic_write_folder(folder, write)


class LowerLayerCache:
    """The frozen lower layers' output states of each token sequence, computed once: they cannot change while only
    the layers above train. Stored per sequence (padding removed); in bf16 under bf16 autocast (half the memory)."""

    def __init__(self, causal_lm, pad_id: int, n_layers: int, autocast, batch_tokens: int = 8192):
        self.causal_lm, self.pad_id, self.n_layers, self.autocast = causal_lm, pad_id, n_layers, autocast
        self.batch_tokens = batch_tokens
        self.states: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, sequences: list[list[int]], keep: bool = True) -> list[torch.Tensor]:
        if not keep:
            with self.autocast():
                return lower_hidden_states(self.causal_lm, sequences, self.pad_id, self.n_layers)
        missing = list({tuple(s) for s in sequences} - self.states.keys())
        for chunk in plan_batches([len(s) for s in missing], len(missing), self.batch_tokens):
            with self.autocast() as autocast:
                states = lower_hidden_states(self.causal_lm, [list(missing[i]) for i in chunk], self.pad_id,
                                             self.n_layers)
            dtype = torch.bfloat16 if autocast is not None else None  # bf16 residuals, as a bf16 model has them
            for i, state in zip(chunk, states):
                self.states[missing[i]] = state.to(dtype=dtype, copy=True)
        return [self.states[tuple(s)] for s in sequences]

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: torch.save(self.states, tmp))

    def load(self, path: Path) -> None:
        """Add the states ``save`` wrote (valid only for the same frozen layers: the same base and ``train_layers``)."""
        self.states.update(torch.load(path, weights_only=True))
