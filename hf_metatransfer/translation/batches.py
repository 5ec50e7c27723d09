"""Tokenised batches of sentence pairs: training batches (loss on target tokens only) and generation batches.

One :class:`TranslationBatcher` serves both model families. Encoder-decoder: the source (with the prompt's
prefix) is the encoder input and the target the labels. Decoder-only: prompt and target are one sequence whose
labels are -100 on the prompt and on padding, so the loss is the target's alone; generation prompts are
left-padded; an instruct model's prompts are rendered with its chat template, in training as in generation. It is
also the ``collate`` of :class:`~hf_metatransfer.meta.MetaTrainer` for translation tasks:
``batcher(task) -> {"support": batch, "query": batch}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..episodes.translation import TranslationTask
from .prompts import TranslationPrompt

__all__ = ["TaskTexts", "TranslationBatcher", "context_length"]

logger = logging.getLogger(__name__)

Examples = Sequence[tuple[str, str]]

_FALLBACK_LENGTH = 1024  # when neither the config nor the tokenizer states a context length
_NO_LIMIT = 10**12  # tokenizers without a limit report int(1e30) ("VERY_LARGE_INTEGER")


@dataclass(frozen=True)
class TaskTexts:
    """A translation task as strings: the language pair, K support pairs and Q query pairs."""

    source_lang: str
    target_lang: str
    support_sources: list[str]
    support_targets: list[str]
    query_sources: list[str]
    query_targets: list[str]

    @property
    def support(self) -> list[tuple[str, str]]:
        return list(zip(self.support_sources, self.support_targets))


class TranslationBatcher:
    """Turns sentence pairs into model inputs for one model and tokenizer.

    Length limits. A decoder-only prompt keeps its instruction and its cue whole: when the in-context examples do
    not all fit, K is lowered (for all the prompts of the call, so they share their examples) with a one-line
    warning naming the limit and the K used; a source that does not fit even with no example loses its end. A target
    longer than ``max_target_length`` is cut and ends without EOS (a model must not learn to stop mid-sentence);
    the warning says which limit was hit and how often.

    Args:
        tokenizer: the model's tokenizer; it must have a pad token.
        is_encoder_decoder: the model's ``config.is_encoder_decoder``.
        prompt: the text format (default: :meth:`TranslationPrompt.for_model_type` of ``model_type``); its
            ``use_chat_template`` (default True) renders decoder-only prompts, for training and generation alike,
            with the tokenizer's chat template when it has one.
        texts: ``task -> (support sources, support targets, query sources, query targets)``, e.g.
            ``TranslationTaskSampler.texts``; needed only to call the batcher on a task.
        max_length: longest input in tokens (decoder-only: prompt and target together; encoder-decoder: the
            source). Default: the model's context length (:meth:`for_model`: the smaller of
            ``config.max_position_embeddings`` and ``tokenizer.model_max_length``; here the tokenizer's), or 1024
            when neither states one.
        max_target_length: longest target in tokens.
        language_codes: for tokenizers that take language codes (NLLB, M2M100, mBART), the code of each language
            (``{"fr": "fra_Latn"}``): set as ``tokenizer.src_lang`` / ``tgt_lang`` and forced as the first
            generated token.
    """

    def __init__(
        self,
        tokenizer,
        *,
        is_encoder_decoder: bool,
        model_type: str = "",
        prompt: TranslationPrompt | None = None,
        texts: Callable[[TranslationTask], tuple[list[str], list[str], list[str], list[str]]] | None = None,
        max_length: int | None = None,
        max_target_length: int = 128,
        language_codes: dict[str, str] | None = None,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError(
                f"The tokenizer ({type(tokenizer).__name__}) has no pad token, which batching needs. For a "
                "decoder-only LM set `tokenizer.pad_token = tokenizer.eos_token`; otherwise add one with "
                "`tokenizer.add_special_tokens({'pad_token': '<pad>'})` and `model.resize_token_embeddings(len(tokenizer))`."
            )
        if not is_encoder_decoder and tokenizer.eos_token_id is None:
            raise ValueError(
                "A decoder-only LM's tokenizer needs an EOS token to end translations: set `tokenizer.eos_token`."
            )
        self.tokenizer = tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        self.prompt = prompt or TranslationPrompt.for_model_type(model_type)
        self.texts = texts
        self.max_length = max_length or context_length(tokenizer) or _FALLBACK_LENGTH
        self.max_target_length = max_target_length
        self.language_codes = language_codes or {}
        if not 1 <= max_target_length < self.max_length:
            raise ValueError(
                f"max_target_length ({max_target_length}) must be >= 1 and below max_length ({self.max_length}): "
                "a decoder-only LM's prompt and target share max_length."
            )

    @classmethod
    def for_model(cls, model, tokenizer, **kwargs) -> TranslationBatcher:
        """A batcher for ``model`` (a PEFT model too): family, prompt and length limit read from its config."""
        config = model.config
        kwargs.setdefault("model_type", getattr(config, "model_type", ""))
        if not kwargs.get("max_length"):
            kwargs["max_length"] = context_length(tokenizer, config) or _FALLBACK_LENGTH
        return cls(tokenizer, is_encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)), **kwargs)

    @property
    def uses_chat_template(self) -> bool:
        """Whether decoder-only prompts are chat turns rendered by the tokenizer's template."""
        return (
            not self.is_encoder_decoder
            and self.prompt.use_chat_template
            and bool(getattr(self.tokenizer, "chat_template", None))
        )

    # -- MetaTrainer collate ------------------------------------------------------------------------------
    def task_texts(self, task: TranslationTask) -> TaskTexts:
        if self.texts is None:
            raise ValueError("This batcher has no `texts`: pass texts=sampler.texts to call it on tasks.")
        return TaskTexts(task.source_lang, task.target_lang, *self.texts(task))

    def __call__(self, task: TranslationTask) -> dict[str, dict[str, torch.Tensor]]:
        t = self.task_texts(task)
        return {"support": self.training_batch(t.support_sources, t.support_targets, t.source_lang, t.target_lang),
                "query": self.training_batch(t.query_sources, t.query_targets, t.source_lang, t.target_lang)}  # fmt: skip

    # -- training batches ---------------------------------------------------------------------------------
    def training_batch(self, sources: Sequence[str], targets: Sequence[str], source_lang: str, target_lang: str,
                       examples: Examples = ()) -> dict[str, torch.Tensor]:  # fmt: skip
        """``input_ids``, ``attention_mask`` and ``labels`` (-100 except on target tokens), right-padded. The
        prompt is the generation prompt of the same source, so training and translation see the same format."""
        _check_texts(sources, targets, source_lang, target_lang)
        self._set_language_codes(source_lang, target_lang)
        if self.is_encoder_decoder:
            return self._seq2seq_batch(sources, targets, source_lang, target_lang)
        answers = [self._answer_ids(t, source_lang, target_lang) for t in targets]
        cut_targets = sum(len(a) > self.max_target_length for a in answers)
        answers = [a[: self.max_target_length] for a in answers]  # a cut target ends without EOS
        prompts, cut_sources = self._fit_prompts(
            sources, source_lang, target_lang, examples, [self.max_length - len(a) for a in answers]
        )
        rows = [(p + a, [-100] * len(p) + a) for p, a in zip(prompts, answers)]
        self._warn_truncated(source_lang, target_lang, len(rows), cut_sources, cut_targets)
        return self._pad(rows, left=False)

    def _seq2seq_batch(self, sources, targets, source_lang, target_lang) -> dict[str, torch.Tensor]:
        rows, cut_sources, cut_targets = [], 0, 0
        eos = self.tokenizer.eos_token_id
        for source, target in zip(sources, targets):
            ids = self._ids(self.prompt.seq2seq_source(source, source_lang, target_lang), special=True)
            labels = self.tokenizer(text_target=target, add_special_tokens=True)["input_ids"]
            if eos is not None and labels[-1:] != [
                eos
            ]:  # a tokenizer that adds no EOS: the model must learn to stop
                labels.append(eos)
            cut_sources += len(ids) > self.max_length
            cut_targets += len(labels) > self.max_target_length
            rows.append((_cut(ids, self.max_length), labels[: self.max_target_length]))
        self._warn_truncated(source_lang, target_lang, len(rows), cut_sources, cut_targets)
        return self._pad(rows, left=False)

    # -- generation batches -------------------------------------------------------------------------------
    def prompt_ids(self, sources: Sequence[str], source_lang: str, target_lang: str,
                   examples: Examples = ()) -> list[list[int]]:  # fmt: skip
        """Token ids of each source's generation prompt (encoder-decoder: the encoder input), unpadded. Decoder-only
        prompts leave ``max_target_length`` tokens free and share one K of ``examples``."""
        _check_texts(sources, None, source_lang, target_lang)
        self._set_language_codes(source_lang, target_lang)
        if self.is_encoder_decoder:
            ids = [
                self._ids(self.prompt.seq2seq_source(s, source_lang, target_lang), special=True)
                for s in sources
            ]
            cut = sum(len(i) > self.max_length for i in ids)
            prompts = [_cut(i, self.max_length) for i in ids]
        else:
            room = self.max_length - self.max_target_length
            prompts, cut = self._fit_prompts(
                sources, source_lang, target_lang, examples, [room] * len(sources)
            )
        self._warn_truncated(source_lang, target_lang, len(prompts), cut, 0)
        return prompts

    def pad_prompts(self, prompts: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of prompts, left-padded for decoder-only LMs."""
        return self._pad([(ids, None) for ids in prompts], left=not self.is_encoder_decoder)

    def generation_batch(self, sources: Sequence[str], source_lang: str, target_lang: str,
                         examples: Examples = ()) -> dict[str, torch.Tensor]:  # fmt: skip
        """Model inputs to ``generate`` from: the prompts, left-padded for decoder-only LMs."""
        return self.pad_prompts(self.prompt_ids(sources, source_lang, target_lang, examples))

    def generation_kwargs(self, target_lang: str) -> dict:
        """What ``generate`` needs besides the inputs: pad and stop tokens, a forced target-language code."""
        kwargs: dict = {"pad_token_id": self.tokenizer.pad_token_id}
        if not self.is_encoder_decoder:
            stops = [self.tokenizer.eos_token_id]
            newline = self.tokenizer("\n", add_special_tokens=False)["input_ids"]
            if len(newline) == 1:  # a translation is one line: stop at its end
                stops.append(newline[0])
            kwargs["eos_token_id"] = stops
        elif target_lang in self.language_codes:
            kwargs["forced_bos_token_id"] = self.tokenizer.convert_tokens_to_ids(
                self.language_codes[target_lang]
            )
        return kwargs

    def decode(self, generated: torch.Tensor, prompt_length: int) -> list[str]:
        """Translations from ``generate``'s output: the new tokens up to the end of the first line."""
        if not self.is_encoder_decoder:
            generated = generated[:, prompt_length:]
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [text.strip().split("\n", 1)[0].strip() for text in texts]

    # -- decoder-only prompts -----------------------------------------------------------------------------
    def _prompt(self, source: str, source_lang: str, target_lang: str, examples: Examples) -> list[int]:
        if self.uses_chat_template:
            turns = self.prompt.messages(source, source_lang, target_lang, examples)
            return self._ids(self._render(turns, generation=True), special=False)
        return self._ids(self.prompt.prompt(source, source_lang, target_lang, examples), special=True)

    def _answer_ids(self, target: str, source_lang: str, target_lang: str) -> list[int]:
        """The tokens that follow the prompt: the target and EOS (chat: the assistant turn up to its EOS)."""
        eos = self.tokenizer.eos_token_id
        if not self.uses_chat_template:
            return self._ids(" " + target.strip(), special=False) + [eos]
        turns = self.prompt.messages("x", source_lang, target_lang)
        prompt = self._render(turns, generation=True)
        full = self._render(turns + [{"role": "assistant", "content": target.strip()}], generation=False)
        if not full.startswith(prompt):
            raise ValueError(
                "The tokenizer's chat template renders an assistant turn that does not continue its generation "
                "prompt, so training and generation cannot share a format: use TranslationPrompt(use_chat_template=False)."
            )
        answer = self._ids(full[len(prompt) :], special=False)
        return answer[: answer.index(eos) + 1] if eos in answer else answer + [eos]

    def _render(self, turns: list[dict[str, str]], *, generation: bool) -> str:
        return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation)

    def _fit_prompts(self, sources: Sequence[str], source_lang: str, target_lang: str, examples: Examples,
                     rooms: list[int]) -> tuple[list[list[int]], int]:  # fmt: skip
        """Each source's prompt within its room of tokens, with the most of ``examples`` (the same K for all)
        that fit; a source too long even alone loses its end. Returns the prompts and how many sources were cut."""

        def build(k: int) -> list[list[int]]:
            return [self._prompt(s, source_lang, target_lang, examples[:k]) for s in sources]

        def fits(prompts: list[list[int]]) -> bool:
            return all(len(p) <= room for p, room in zip(prompts, rooms))

        k, prompts = len(examples), build(len(examples))
        if k and not fits(prompts):
            low, high, k, prompts = 0, k - 1, 0, None
            while low <= high:  # the largest K that fits: prompt lengths grow with K
                mid = (low + high) // 2
                candidate = build(mid)
                if fits(candidate):
                    k, prompts, low = mid, candidate, mid + 1
                else:
                    high = mid - 1
            prompts = prompts if prompts is not None else build(0)
            logger.warning(
                "%s->%s: K lowered from %d to %d in-context examples: with %d the prompts do not fit in "
                "max_length=%d tokens less the target's; raise max_length if the model allows.",
                source_lang, target_lang, len(examples), k, len(examples), self.max_length,
            )  # fmt: skip
        cut = 0
        for i, (prompt, room) in enumerate(zip(prompts, rooms)):
            if len(prompt) > room:
                prompts[i] = self._cut_source(sources[i], source_lang, target_lang, examples[:k], room)
                cut += 1
        return prompts, cut

    def _cut_source(self, source: str, source_lang: str, target_lang: str, examples: Examples,
                    room: int) -> list[int]:  # fmt: skip
        """The prompt with the source's end cut until it fits: the instruction and the cue stay whole."""
        tokens = self._ids(source, special=False)
        keep = len(tokens)
        while True:
            text = self.tokenizer.decode(tokens[:keep], skip_special_tokens=True)
            prompt = self._prompt(text, source_lang, target_lang, examples)
            if len(prompt) <= room:
                return prompt
            if keep == 0:
                break
            keep = max(0, keep - (len(prompt) - room))
        raise ValueError(
            f"max_length={self.max_length} leaves {room} tokens for a prompt, too few for the instruction and the "
            "cue alone: raise max_length or lower max_target_length."
        )

    # -- helpers ------------------------------------------------------------------------------------------
    def _ids(self, text: str, *, special: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _set_language_codes(self, source_lang: str, target_lang: str) -> None:
        if not self.language_codes:
            return
        for attr, lang in (("src_lang", source_lang), ("tgt_lang", target_lang)):
            if hasattr(self.tokenizer, attr) and lang in self.language_codes:
                setattr(self.tokenizer, attr, self.language_codes[lang])

    def _pad(self, rows: list[tuple[list[int], list[int] | None]], *, left: bool) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id
        width = max(len(ids) for ids, _ in rows)
        batch: dict[str, list] = {"input_ids": [], "attention_mask": []}
        has_labels = rows[0][1] is not None
        if has_labels:
            batch["labels"] = []
        label_width = (
            max(len(labels) for _, labels in rows) if has_labels and self.is_encoder_decoder else width
        )
        for ids, labels in rows:
            fill = width - len(ids)
            batch["input_ids"].append([pad] * fill + ids if left else ids + [pad] * fill)
            batch["attention_mask"].append(
                [0] * fill + [1] * len(ids) if left else [1] * len(ids) + [0] * fill
            )
            if has_labels:
                batch["labels"].append(labels + [-100] * (label_width - len(labels)))
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}

    def _warn_truncated(
        self, source_lang: str, target_lang: str, total: int, sources: int, targets: int
    ) -> None:
        """One line saying which limit was hit and how often."""
        cuts = []
        if sources:
            what = "source sentences" if self.is_encoder_decoder else "prompts (their source sentence)"
            cuts.append(f"{sources} of {total} {what} truncated to fit max_length={self.max_length} tokens")
        if targets:
            cuts.append(f"{targets} of {total} targets truncated to max_target_length={self.max_target_length} "
                        "tokens (they end without EOS)")  # fmt: skip
        if cuts:
            logger.warning("%s->%s: %s; raise the limits if the model allows.", source_lang, target_lang,
                           "; ".join(cuts))  # fmt: skip


def context_length(tokenizer, config=None) -> int | None:
    """The longest input the model takes: the smaller of ``config.max_position_embeddings`` (or ``n_positions``)
    and ``tokenizer.model_max_length``, ignoring the tokenizer's "no limit" sentinel (a huge int); None if neither
    states one."""
    limits = [getattr(tokenizer, "model_max_length", None)]
    if config is not None:
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        limits += [getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)]
    limits = [int(n) for n in limits if isinstance(n, int) and 0 < n < _NO_LIMIT]
    return min(limits) if limits else None


def _cut(ids: list[int], limit: int) -> list[int]:
    """Truncate an encoder input keeping its last token (EOS) in place, as tokenizers' own truncation does."""
    return ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:]


def _check_texts(
    sources: Sequence[str], targets: Sequence[str] | None, source_lang: str, target_lang: str
) -> None:
    pair = f"{source_lang}->{target_lang}"
    if not sources:
        raise ValueError(f"No sentences to translate for {pair}.")
    if targets is not None and len(targets) != len(sources):
        raise ValueError(f"{pair}: {len(sources)} sources but {len(targets)} targets; they must pair up.")
    for role, texts in (("source", sources), ("target", targets or ())):
        empty = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
        if empty:
            raise ValueError(
                f"{pair}: empty {role} sentence(s) at position(s) {empty[:5]}; drop those pairs "
                "(e.g. dataset.filter(lambda r: r['source'].strip() and r['target'].strip()))."
            )
