"""Tokenised batches of sentence pairs: training batches (loss on target tokens only) and generation batches.

One :class:`TranslationBatcher` serves both model families. Encoder-decoder: the source (with the prompt's
prefix) is the encoder input and the target the labels. Decoder-only: prompt and target are one sequence whose
labels are -100 on the prompt and on padding, so the loss is the target's alone; generation prompts are
left-padded. It is also the ``collate`` of :class:`~hf_metatransfer.meta.MetaTrainer` for translation tasks:
``batcher(task) -> {"support": batch, "query": batch}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..episodes.translation import TranslationTask
from .prompts import TranslationPrompt

__all__ = ["TaskTexts", "TranslationBatcher"]

logger = logging.getLogger(__name__)

Examples = Sequence[tuple[str, str]]


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

    Args:
        tokenizer: the model's tokenizer; it must have a pad token.
        is_encoder_decoder: the model's ``config.is_encoder_decoder``.
        prompt: the text format (default: :meth:`TranslationPrompt.for_model_type` of ``model_type``).
        texts: ``task -> (support sources, support targets, query sources, query targets)``, e.g.
            ``TranslationTaskSampler.texts``; needed only to call the batcher on a task.
        max_length: longest input in tokens (decoder-only: prompt and target together; encoder-decoder: the
            source); longer inputs are truncated with a warning. Default: the model's limit from the tokenizer,
            capped at 1024.
        max_target_length: longest target in tokens (longer ones are truncated with a warning).
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
        limit = getattr(tokenizer, "model_max_length", None) or 1024
        self.max_length = max_length or min(int(limit), 1024)
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
        if "max_length" not in kwargs:
            positions = getattr(config, "max_position_embeddings", None)
            tokenizer_limit = getattr(tokenizer, "model_max_length", None) or 1024
            kwargs["max_length"] = min(int(tokenizer_limit), positions or 1024, 1024)
        return cls(tokenizer, is_encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)), **kwargs)

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
        """``input_ids``, ``attention_mask`` and ``labels`` (-100 except on target tokens), right-padded."""
        _check_texts(sources, targets, source_lang, target_lang)
        self._set_language_codes(source_lang, target_lang)
        if self.is_encoder_decoder:
            return self._seq2seq_batch(sources, targets, source_lang, target_lang)
        rows, truncated = [], 0
        eos = self.tokenizer.eos_token_id
        for source, target in zip(sources, targets):
            prompt = self._ids(self.prompt.prompt(source, source_lang, target_lang, examples), special=True)
            answer = self._ids(" " + target.strip(), special=False) + [eos]
            truncated += len(answer) > self.max_target_length
            answer = _cut(answer, self.max_target_length)
            room = self.max_length - len(answer)
            truncated += len(prompt) > room
            prompt = prompt[-room:] if len(prompt) > room else prompt  # keep the cue: cut the prompt's start
            rows.append((prompt + answer, [-100] * len(prompt) + answer))
        self._warn_truncated(truncated, len(rows))
        return self._pad(rows, left=False)

    def _seq2seq_batch(self, sources, targets, source_lang, target_lang) -> dict[str, torch.Tensor]:
        rows, truncated = [], 0
        for source, target in zip(sources, targets):
            ids = self._ids(self.prompt.seq2seq_source(source, source_lang, target_lang), special=True)
            labels = self.tokenizer(text_target=target, add_special_tokens=True)["input_ids"]
            eos = self.tokenizer.eos_token_id
            if eos is not None and labels[-1:] != [
                eos
            ]:  # a tokenizer that adds no EOS: the model must learn to stop
                labels.append(eos)
            truncated += len(ids) > self.max_length or len(labels) > self.max_target_length
            rows.append((_cut(ids, self.max_length), _cut(labels, self.max_target_length)))
        self._warn_truncated(truncated, len(rows))
        return self._pad(rows, left=False)

    # -- generation batches -------------------------------------------------------------------------------
    def generation_batch(self, sources: Sequence[str], source_lang: str, target_lang: str,
                         examples: Examples = ()) -> dict[str, torch.Tensor]:  # fmt: skip
        """Model inputs to ``generate`` from: the prompts, left-padded for decoder-only LMs."""
        _check_texts(sources, None, source_lang, target_lang)
        self._set_language_codes(source_lang, target_lang)
        rows, truncated = [], 0
        for source in sources:
            if self.is_encoder_decoder:
                ids = self._ids(self.prompt.seq2seq_source(source, source_lang, target_lang), special=True)
                truncated += len(ids) > self.max_length
                ids = _cut(ids, self.max_length)
            else:
                ids = self._ids(self.prompt.prompt(source, source_lang, target_lang, examples), special=True)
                room = self.max_length - self.max_target_length
                truncated += len(ids) > room
                ids = ids[-room:] if len(ids) > room else ids
            rows.append((ids, None))
        self._warn_truncated(truncated, len(rows))
        return self._pad(rows, left=not self.is_encoder_decoder)

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

    def _warn_truncated(self, truncated: int, total: int) -> None:
        if truncated:
            logger.warning(
                "%d of %d examples were longer than max_length=%d (or max_target_length=%d) tokens and were "
                "truncated (decoder-only prompts lose their start, so in-context examples go first); raise the "
                "limits if the model allows.", truncated, total, self.max_length, self.max_target_length,
            )  # fmt: skip


def _cut(ids: list[int], limit: int) -> list[int]:
    """Truncate keeping the last token (EOS) in place."""
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
