"""The encoder options, each declared once: its type, default, allowed values and help. The ``run`` command's flags
are generated from these fields (``add_arguments``), verify's conditions and library calls build the same dataclass,
and ``validate`` checks them all the same way before any model loads."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from collections.abc import Callable
from typing import Any, get_type_hints

from searchr3_eval.errors import UserError
from searchr3_eval.models.encoding import AUTO_CPU_TOKENS
from searchr3_eval.models.lm.device import DTYPE_CHOICES, resolve_device
from searchr3_eval.models.lm.prompt_format import CASE_FOLDS, PROMPT_PRESETS
from searchr3_eval.retrieval import parse_index

REASONING_CHOICES = ("off", "on", "all")
BACKEND_CHOICES = ("transformers", "vllm")


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, at_least: float | None = None,
           above: float | None = None, at_most: float | None = None, flag: bool = True) -> Any:
    """A dataclass field with what its flag needs: ``choices`` it must be one of, ``at_least`` its lowest value,
    ``above`` a bound it must exceed, ``at_most`` its highest value; ``flag=False``: set by the library, not on the
    command line."""
    return field(default=default, metadata={"help": help, "choices": choices, "at_least": at_least, "above": above,
                                            "at_most": at_most, "flag": flag})


@dataclass
class ModelOptions:
    """Encoder options, with their defaults (the CLI's flags and defaults come from here)."""

    batch_size: int = option(256, "texts per batch at most", at_least=1)
    batch_tokens: int | str = option("auto", "padded tokens per batch at most (texts are batched longest first); auto: "
                                             f"{AUTO_CPU_TOKENS} on a CPU, sized from free memory on a CUDA GPU",
                                     at_least=1)
    reasoning: str = option("off", "Search-R3 reasoning: off, on (queries reason), all (queries and documents)",
                            REASONING_CHOICES)
    max_length: int = option(512, "tokens of a text's whole sequence at most (longer texts are cut)", at_least=1)
    max_new_tokens: int = option(64, "tokens of a reasoning analysis at most", at_least=0)
    reasoning_samples: int = option(1, "analyses per reasoning text: 1 (greedy) or K sampled, their embeddings "
                                       "averaged", at_least=1)
    reasoning_temperature: float = option(0.8, "sampling temperature when --reasoning-samples > 1", above=0)
    reasoning_direct_weight: float = option(0.0, "the direct embedding's share of a reasoning embedding: 0 (the "
                                                 "embedding after the analysis) to 1; HyDE averages the query's own "
                                                 "embedding with the generated ones", at_least=0, at_most=1)
    dtype: str = option("auto", "LLM weights and compute; auto: bfloat16 where the CPU/GPU has native bf16, else "
                                "float32", DTYPE_CHOICES)
    device: str = option("auto", "auto (a GPU when present), cpu, cuda, cuda:N or mps")
    backend: str = option("transformers", "where Search-R3 generates its analyses (vllm: a CUDA GPU)", BACKEND_CHOICES)
    add_embed_token: bool = option(False, "add an (untrained) embed token to models without one")
    prompts: str | None = option(None, "Search-R3 prompt preset (paper: the released checkpoint's format); default: "
                                       "the preset the model was trained with (recorded in a trained adapter), else "
                                       "paper", tuple(sorted(PROMPT_PRESETS)))
    system_prompt: str | None = option(None, "Search-R3 system prompt (replaces the preset's)")
    query_prompt: str | None = option(None, "prefix for queries: the sentence-transformers prompt, or Search-R3's "
                                            "user-turn prefix")
    document_prompt: str | None = option(None, "prefix for documents (as --query-prompt)")
    case_fold: str | None = option(None, "Search-R3 letter case: all-caps lower-cases a text of three words or more "
                                         "at least nine tenths of whose cased letters are capitals, all-caps-sentence "
                                         "writes it in sentence case, off embeds every text as it is; default: what "
                                         "the model's manifest declares, else off",
                                   CASE_FOLDS)
    index: str = option("flat", "dense search: flat (exact), ivf or hnsw (faiss), e.g. ivf:nprobe=32 or "
                                "hnsw:ef_search=512")
    memmap_dir: Path | None = option(None, "keep corpus embeddings in a memory-mapped file in this folder (corpora "
                                           "larger than RAM)")
    show_progress: bool = option(True, "progress bars (the command line's --quiet turns them off)", flag=False)

    def validate(self) -> None:
        """A ``UserError`` naming the flag for the first value out of its declared range."""
        for f in fields(self):
            value, meta, flag = getattr(self, f.name), f.metadata, flag_name(f.name)
            if f.name == "batch_tokens" and value != "auto" and not isinstance(value, int):
                raise UserError(f"{flag} must be auto or a number of tokens, not {value!r}")
            if isinstance(value, str) and meta["at_least"] is not None:  # "auto"
                continue
            if meta["choices"] and value is not None and value not in meta["choices"]:
                raise UserError(f"{flag} must be {', '.join(meta['choices'][:-1])} or {meta['choices'][-1]}, "
                                f"not {value!r}")
            if meta["at_least"] is not None and value < meta["at_least"]:
                raise UserError(f"{flag} must be at least {meta['at_least']}")
            if meta["above"] is not None and not value > meta["above"]:
                raise UserError(f"{flag} must be greater than {meta['above']}")
            if meta["at_most"] is not None and value > meta["at_most"]:
                raise UserError(f"{flag} must be at most {meta['at_most']}")
        resolve_device(self.device)
        parse_index(self.index)
        if self.memmap_dir is not None and not Path(self.memmap_dir).is_dir():
            raise UserError(f"--memmap-dir {self.memmap_dir} is not a folder")


def split_spec_options(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``name[key=value,...]`` -> (name, sorted (key, value) pairs); a text without brackets has none. Keys are
    ``ModelOptions`` command-line fields (with - or _)."""
    if not text.endswith("]") or "[" not in text:
        return text, ()
    base, _, inner = text[:-1].partition("[")
    pairs = {}
    for item in filter(None, (i.strip() for i in inner.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in FLAG_FIELDS:
            raise UserError(f"model spec {text!r}: {item!r} is not key=value with a key among "
                            f"{', '.join(sorted(FLAG_FIELDS))}")
        pairs[key] = value.strip()
    return base.strip(), tuple(sorted(pairs.items()))


def with_spec_options(options: ModelOptions, pairs: tuple[tuple[str, str], ...], label: str) -> ModelOptions:
    """``options`` with a spec's own options (strings, read as each field's type) in place, validated."""
    if not pairs:
        return options
    hints, values = get_type_hints(ModelOptions), {}
    for key, text in pairs:
        kind = hints[key]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError("true or false")
                values[key] = text.lower() == "true"
            elif text.lower() == "none" and type(None) in getattr(kind, "__args__", ()):
                values[key] = None
            else:
                values[key] = field_type(kind)(text)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise UserError(f"model spec {label!r}: {key}={text!r} is not a valid value ({exc})") from exc
    merged = replace(options, **values)
    try:
        merged.validate()
    except UserError as exc:
        raise UserError(f"model spec {label!r}: {exc}") from exc
    return merged


def field_type(hint: Any) -> Callable[[str], Any]:
    """How a field's value is read from text: int, float, Path or str (int or "auto" where both are allowed)."""
    if {int, str} <= set(getattr(hint, "__args__", ())):
        return int_or_auto
    return next(t for t in (int, float, Path, str) if t == hint or t in getattr(hint, "__args__", ()))


def int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"auto or a whole number, not {text!r}") from None


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag for each command-line field of ``ModelOptions``, with its default, choices and help."""
    hints = get_type_hints(ModelOptions)
    for f in fields(ModelOptions):
        if not f.metadata["flag"]:
            continue
        if hints[f.name] is bool:
            parser.add_argument(flag_name(f.name), action="store_true", help=f.metadata["help"])
            continue
        parser.add_argument(flag_name(f.name), type=field_type(hints[f.name]), default=f.default,
                            choices=f.metadata["choices"], help=f.metadata["help"])


def from_arguments(args: argparse.Namespace, show_progress: bool) -> ModelOptions:
    """The options the parsed flags of ``add_arguments`` give."""
    return ModelOptions(**{f.name: getattr(args, f.name) for f in fields(ModelOptions) if f.metadata["flag"]},
                        show_progress=show_progress)


FLAG_FIELDS = frozenset(f.name for f in fields(ModelOptions) if f.metadata["flag"])
