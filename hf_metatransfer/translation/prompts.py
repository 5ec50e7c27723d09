"""How a sentence pair becomes text for a model: a prompt for decoder-only LMs, a source prefix for seq2seq models.

Decoder-only LMs see ``instruction``, then one line pair per in-context example, then the query's source line and
the target-language cue; the translation follows the cue and ends at the end of the line (and EOS when trained).
Encoder-decoder models see the source sentence, with an optional prefix (T5's ``"translate English to German: "``).
Instruct models (a tokenizer with a chat template) see the same lines as chat turns (:meth:`TranslationPrompt.messages`),
the format they were trained on, unless ``use_chat_template=False``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["TranslationPrompt", "language_name"]


def language_name(code: str, names: Mapping[str, str] | None = None) -> str:
    """English name of a language code (``"de"``, ``"pt_BR"``, ``"zh-Hans"``), from ``names``, then from the
    locale table Django ships (when installed), else the code itself."""
    if names and code in names:
        return names[code]
    try:
        from django.conf.locale import LANG_INFO
    except ImportError:
        return code
    info = LANG_INFO.get(code.replace("_", "-").lower(), {})
    while "fallback" in info and "name" not in info:  # e.g. "zh-cn" points at "zh-hans"
        info = LANG_INFO.get(info["fallback"][0], {})
    return info.get("name", code)


@dataclass(frozen=True)
class TranslationPrompt:
    """The text format of translation examples (one object for both model families).

    ``use_chat_template``: render decoder-only prompts with the tokenizer's chat template when it has one (instruct
    models); False keeps the raw lines, as for base models. Training and generation batches follow the same setting.
    """

    instruction: str = "Translate from {source_name} to {target_name}."
    line: str = "{source_name}: {source}\n{target_name}:"
    source_prefix: str = ""
    language_names: Mapping[str, str] = field(default_factory=dict)
    use_chat_template: bool = True

    @classmethod
    def for_model_type(cls, model_type: str, **overrides) -> TranslationPrompt:
        """The usual format for a ``config.model_type``: T5 / mT5 get their task prefix, others the defaults."""
        if model_type in ("t5", "mt5", "umt5") and "source_prefix" not in overrides:
            overrides["source_prefix"] = "translate {source_name} to {target_name}: "
        return cls(**overrides)

    def _names(self, source_lang: str, target_lang: str) -> dict[str, str]:
        return {"source_name": language_name(source_lang, self.language_names),
                "target_name": language_name(target_lang, self.language_names)}  # fmt: skip

    def cue(self, source: str, source_lang: str, target_lang: str) -> str:
        """The source line and the target-language cue that the translation completes."""
        return self.line.format(source=source, **self._names(source_lang, target_lang))

    def context(self, source_lang: str, target_lang: str, examples: Sequence[tuple[str, str]] = ()) -> str:
        """The instruction and the in-context examples, each a completed line pair."""
        lines = [self.instruction.format(**self._names(source_lang, target_lang))]
        lines += [f"{self.cue(s, source_lang, target_lang)} {t}" for s, t in examples]
        return "\n".join(lines) + "\n"

    def prompt(
        self, source: str, source_lang: str, target_lang: str, examples: Sequence[tuple[str, str]] = ()
    ) -> str:
        """Everything a decoder-only LM reads before it writes the translation of ``source``."""
        return self.context(source_lang, target_lang, examples) + self.cue(source, source_lang, target_lang)

    def messages(
        self, source: str, source_lang: str, target_lang: str, examples: Sequence[tuple[str, str]] = ()
    ) -> list[dict[str, str]]:
        """The prompt as chat turns: each example a user turn (its source line and cue) answered by an assistant
        turn (its target), then the query's user turn; the instruction opens the first user turn."""
        turns: list[dict[str, str]] = []
        for s, t in examples:
            turns += [{"role": "user", "content": self.cue(s, source_lang, target_lang)},
                      {"role": "assistant", "content": t.strip()}]  # fmt: skip
        turns.append({"role": "user", "content": self.cue(source, source_lang, target_lang)})
        instruction = self.instruction.format(**self._names(source_lang, target_lang))
        turns[0] = {"role": "user", "content": f"{instruction}\n{turns[0]['content']}"}
        return turns

    def seq2seq_source(self, source: str, source_lang: str, target_lang: str) -> str:
        """The encoder input of an encoder-decoder model."""
        return self.source_prefix.format(**self._names(source_lang, target_lang)) + source
