"""The Search-R3 prompt format: the chat turns around a text (system prompt, a per-kind prefix of the user turn), the
answer that ends at ``<|embed_token|>`` (the direct phrase, or an analysis), truncation that keeps the text's start,
and the prompts reasoning generates from. The evaluation's encoder and the trainer's policy hold the same
``PromptFormat``, so a sequence trained on is the sequence evaluated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

from transformers import AddedToken

from searchr3_eval.data import Kind
from searchr3_eval.errors import UserError
from searchr3_eval.models.lm.locate import is_adapter, read_manifest, resolve_llm

EMBED_TOKEN = "<|embed_token|>"


@dataclass(frozen=True)
class Prompts:
    """The chat turns around a text: system prompt, a per-kind prefix of the user turn, the direct answer."""

    system: str
    reasoning_system: str
    query: str
    document: str
    direct_answer: str


# The paper's and the released checkpoint's format (ytgui/Search-R3.0-Small): system "Please represent user
# queries.", user = the text, assistant "The embedding is <|embed_token|>." The hidden state is read at the token,
# so what follows it ("." and the end of turn) cannot change it in a causal model and is not rendered.
PAPER = "Please represent user queries."
PROMPT_PRESETS: dict[str, Prompts] = {
    "paper": Prompts(system=PAPER, reasoning_system=PAPER, query="", document="", direct_answer="The embedding is "),
    "instruct": Prompts(
        system="You are a search embedding model. Read the user's text and represent its meaning.",
        reasoning_system=(
            "You are a search embedding model. Briefly analyse the user's text: its topic, key entities and "
            f"what a searcher needs. Then end your answer with {EMBED_TOKEN}."
        ),
        query="Represent this search query for retrieving relevant documents:\n",
        document="Represent this document for retrieval:\n",
        direct_answer="The embedding of this text is ",
    ),
}
DEFAULT_PRESET = "paper"

# Letter-case folding of a text before it is embedded. A text of at least CAPITALS_WORDS words at least
# CAPITALS_SHARE of whose cased letters are capitals is rewritten (a cased tokenizer splits capitals into rare pieces
# a small model reads poorly, and old collections and users write whole texts in capitals); any other text, an acronym
# alone ("ADHD", "IGF-1") among them, is embedded as it is. all-caps: the text in lower case; all-caps-sentence: in
# sentence case (lower case, a capital at its start and at each sentence's, after ".", "!" or "?").
CASE_FOLDS = ("off", "all-caps", "all-caps-sentence")
CAPITALS_SHARE = 0.9
CAPITALS_WORDS = 3
SENTENCE_START = re.compile(r"(^\W*|[.!?][^\w\s]*\s+\W*)([^\W\d_])")


def fold_case(text: str, case_fold: str) -> str:
    """``text`` as a model with ``case_fold`` embeds it."""
    if case_fold == "off" or len(re.findall(r"[^\W\d_]+", text)) < CAPITALS_WORDS:
        return text
    upper = sum(c.isupper() for c in text)
    lower = sum(c.islower() for c in text)
    if not upper or upper < CAPITALS_SHARE * (upper + lower):
        return text
    if case_fold == "all-caps":
        return text.lower()
    return SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text.lower())


def declared(name_or_path: str, key: str, default: str) -> str:
    """What a trained adapter's manifest records under ``key`` (an adapter without it, and every other model:
    ``default``)."""
    folder = resolve_llm(name_or_path)[0]
    return read_manifest(folder).get(key, default) if is_adapter(folder) else default


def trained_case_fold(name_or_path: str) -> str:
    """The case folding a packaged model declares (its manifest's ``case_fold``); every other model: off."""
    return declared(name_or_path, "case_fold", "off")


def trained_preset(name_or_path: str) -> str:
    """The prompt preset a model was trained with: a trained adapter records it (adapters saved before this was
    recorded, and every other model, use the paper's)."""
    return declared(name_or_path, "prompts", DEFAULT_PRESET)


def resolve_prompts(preset: str = DEFAULT_PRESET, system: str | None = None, query: str | None = None,
                    document: str | None = None) -> Prompts:
    """A preset with optional overrides (``system`` replaces both system prompts)."""
    if preset not in PROMPT_PRESETS:
        raise UserError(f"unknown prompt preset {preset!r}; use one of {', '.join(PROMPT_PRESETS)}")
    prompts = PROMPT_PRESETS[preset]
    if system is not None:
        prompts = replace(prompts, system=system, reasoning_system=system)
    if query is not None:
        prompts = replace(prompts, query=query)
    if document is not None:
        prompts = replace(prompts, document=document)
    return prompts


def add_embed_token(model, tokenizer) -> int:
    """Add ``<|embed_token|>`` as a special token; its new embedding row is the mean of the others."""
    tokenizer.add_tokens([AddedToken(EMBED_TOKEN, special=True, normalized=False)], special_tokens=True)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[old:] = weight[:old].mean(dim=0)
        output = model.get_output_embeddings()
        if output is not None and output.weight.data_ptr() != weight.data_ptr():
            output.weight[old:] = output.weight[:old].mean(dim=0)
    return tokenizer.convert_tokens_to_ids(EMBED_TOKEN)


def embed_token_id(tokenizer) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(EMBED_TOKEN)
    return None if token_id is None or token_id == tokenizer.unk_token_id else token_id


class PromptFormat:
    """Token ids of a tokenizer's chat template around texts, for one set of ``Prompts`` and length caps."""

    def __init__(self, tokenizer, prompts: Prompts, max_length: int, max_new_tokens: int, name: str = "Search-R3"):
        token_id = embed_token_id(tokenizer)
        if token_id is None:
            raise UserError(f"model {name!r} has no {EMBED_TOKEN} token: it is not a Search-R3 model (use --add-embed-token)")
        if tokenizer.chat_template is None:
            raise UserError(f"model {name!r} has no chat template")
        self.tokenizer, self.prompts, self.embed_id, self.name = tokenizer, prompts, token_id, name
        self.max_length, self.max_new_tokens = max_length, max_new_tokens
        self._overheads: dict[tuple, int] = {}

    def messages(self, text: str, kind: Kind, reasoning: bool) -> list[dict[str, str]]:
        system = self.prompts.reasoning_system if reasoning else self.prompts.system
        instruction = self.prompts.query if kind == "query" else self.prompts.document
        return [{"role": "system", "content": system}, {"role": "user", "content": instruction + text}]

    def render(self, messages: list[dict[str, str]], answer: str | None) -> list[int]:
        if answer is None:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        full = [*messages, {"role": "assistant", "content": answer}]
        return self.tokenizer.apply_chat_template(full, continue_final_message=True, tokenize=True, return_dict=False)

    def overhead(self, kind: Kind, reasoning: bool) -> int:
        """Tokens of the prompt and answer around a text (the same for every text of a kind; memoised)."""
        key = (kind, reasoning, self.prompts, self.tokenizer.chat_template)
        if key not in self._overheads:
            answer = "" if reasoning else self.prompts.direct_answer
            self._overheads[key] = len(self.render(self.messages("", kind, reasoning), answer + EMBED_TOKEN))
        return self._overheads[key]

    def truncate(self, text: str, kind: Kind, reasoning: bool, max_length: int | None = None) -> str:
        """Cut the text (keeping its start) so prompt, answer and token fit in ``max_length``."""
        max_length = max_length or self.max_length
        overhead = self.overhead(kind, reasoning)
        budget = max_length - overhead - (self.max_new_tokens if reasoning else 0)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if budget <= 0:
            raise UserError(f"max_length {max_length} leaves no room for text (prompt uses {overhead} tokens)")
        return text if len(ids) <= budget else self.tokenizer.decode(ids[:budget])

    def direct_answer_length(self, kind: Kind) -> int:
        """Tokens of the direct-mode answer (fixed phrase + embed token); the same for every text."""
        messages = self.messages("", kind, False)
        return len(self.render(messages, self.prompts.direct_answer + EMBED_TOKEN)) - len(self.render(messages, None))

    def sequences(self, texts: list[str], kind: Kind, analyses: list[str] | None = None,
                  max_length: int | None = None) -> list[list[int]]:
        """Token ids ending in the embed token; longer inputs are left-truncated to ``max_length``."""
        reasoning, max_length = analyses is not None, max_length or self.max_length
        out = []
        for i, text in enumerate(texts):
            messages = self.messages(self.truncate(text, kind, reasoning, max_length), kind, reasoning)
            answer = (analyses[i].strip() + " " if reasoning else self.prompts.direct_answer) + EMBED_TOKEN
            ids = self.render(messages, answer)
            if ids[-1] != self.embed_id:
                raise UserError(f"the chat template of {self.name!r} does not end the answer at {EMBED_TOKEN}")
            out.append(ids[-max_length:])
        return out

    def generation_prompts(self, texts: list[str], kind: Kind) -> list[list[int]]:
        return [self.render(self.messages(self.truncate(t, kind, True), kind, True), None) for t in texts]
