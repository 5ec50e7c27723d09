"""Length budgets of translation batches: the model's real context length, K lowered (never the instruction or
the cue cut), cut targets without EOS, warnings that name the limit hit, and chat-template prompts for instruct
models (the same format for training and generation)."""

from __future__ import annotations

import logging

import pytest
import transformers as T

from hf_metatransfer.translation import TranslationBatcher, TranslationPrompt
from hf_metatransfer.translation.batches import context_length
from tests.test_translation_models import PROMPT, char_tokenizer, tiny_llama, tiny_seq2seq

# A minimal chat template: each turn "<s>role\ncontent</s>\n"; the generation prompt opens the assistant turn.
CHAT = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
EXAMPLES = [(f"src{i}", f"tgt{i}") for i in range(8)]


def chat_tokenizer() -> T.PreTrainedTokenizerFast:
    tok = char_tokenizer()
    tok.chat_template = CHAT
    return tok


def llama(max_positions: int = 512) -> T.LlamaForCausalLM:
    model = tiny_llama()
    model.config.max_position_embeddings = max_positions
    return model


# -- the model's context length -----------------------------------------------------------------------------------


def test_default_max_length_is_the_models_context_length_not_1024():
    tok = char_tokenizer()
    assert tok.model_max_length > 10**20  # the "no limit" sentinel: ignored
    assert TranslationBatcher.for_model(llama(8192), tok).max_length == 8192
    tok.model_max_length = 3000  # the smaller of the tokenizer's and the config's limits
    assert TranslationBatcher.for_model(llama(8192), tok).max_length == 3000
    assert context_length(char_tokenizer()) is None
    assert TranslationBatcher(char_tokenizer(), is_encoder_decoder=False).max_length == 1024  # nothing stated
    assert TranslationBatcher.for_model(llama(8192), char_tokenizer(), max_length=700).max_length == 700
    marian = tiny_seq2seq("marian")  # max_position_embeddings=256 in its config
    assert TranslationBatcher.for_model(marian, char_tokenizer()).max_length == 256


# -- K lowered, never the instruction or the cue ------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", [char_tokenizer, chat_tokenizer], ids=["raw", "chat"])
def test_prompts_that_cannot_hold_k_examples_get_fewer_with_a_warning(tokenizer, caplog):
    tok = tokenizer()
    full = TranslationBatcher.for_model(llama(), tok, prompt=PROMPT, max_target_length=10)
    sources = ["a", "abcdefghij"]
    lengths = [max(len(p) for p in full.prompt_ids(sources, "en", "xx", EXAMPLES[:k])) for k in range(9)]
    assert lengths == sorted(lengths) and lengths[8] > lengths[5]
    room = lengths[5] + 1  # 5 examples fit, 6 do not
    batcher = TranslationBatcher.for_model(
        llama(), tok, prompt=PROMPT, max_length=room + 10, max_target_length=10
    )
    with caplog.at_level(logging.WARNING):
        prompts = batcher.prompt_ids(sources, "en", "xx", EXAMPLES)
    assert "K lowered from 8 to 5" in caplog.text and f"max_length={room + 10}" in caplog.text
    assert prompts == full.prompt_ids(sources, "en", "xx", EXAMPLES[:5])  # whole prompts with the first 5
    text = tok.decode(prompts[1])
    assert "Translate from English to Xish." in text and text.rstrip().endswith(("Xish:", "assistant"))
    assert "English: abcdefghij\nXish:" in text

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # training batches budget the same way (room less the target)
        batch = batcher.training_batch(sources, ["A", "B"], "en", "xx", examples=EXAMPLES)
    assert "K lowered from 8 to" in caplog.text
    assert batch["input_ids"].shape[1] <= room + 10


def test_a_source_too_long_even_alone_loses_its_end_not_the_instruction_or_cue(caplog):
    tok = char_tokenizer()
    batcher = TranslationBatcher.for_model(llama(), tok, prompt=PROMPT, max_length=80, max_target_length=10)
    with caplog.at_level(logging.WARNING):
        (prompt,) = batcher.prompt_ids(["0123456789" * 20], "en", "xx", EXAMPLES)
    assert len(prompt) == 70
    text = tok.decode(prompt)
    assert text.startswith("Translate from English to Xish.\nEnglish: 0123") and text.endswith("\nXish:")
    assert "K lowered from 8 to 0" in caplog.text
    assert "1 of 1 prompts (their source sentence) truncated to fit max_length=80" in caplog.text
    with pytest.raises(ValueError, match="too few for the instruction and the cue"):
        TranslationBatcher.for_model(
            llama(), tok, prompt=PROMPT, max_length=30, max_target_length=10
        ).prompt_ids(["a"], "en", "xx")


# -- cut targets end without EOS -------------------------------------------------------------------------------


def test_cut_targets_end_without_eos_and_the_warning_names_max_target_length(caplog):
    tok = char_tokenizer()
    batcher = TranslationBatcher.for_model(llama(), tok, prompt=PROMPT, max_target_length=6)
    with caplog.at_level(logging.WARNING):
        batch = batcher.training_batch(["a", "b"], ["XYZ", "0123456789"], "en", "xx")
    labels = [row[row != -100].tolist() for row in batch["labels"]]
    assert labels[0] == tok(" XYZ", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id
    ]  # fits: EOS kept
    assert labels[1] == tok(" 01234", add_special_tokens=False)["input_ids"]  # cut: no EOS
    assert "1 of 2 targets truncated to max_target_length=6 tokens (they end without EOS)" in caplog.text
    assert "max_length=" not in caplog.text.replace("max_target_length", "")  # no prompt was cut


@pytest.mark.parametrize("arch", ["marian", "t5"])
def test_seq2seq_cut_labels_end_without_eos(arch, caplog):
    tok = char_tokenizer()
    batcher = TranslationBatcher.for_model(tiny_seq2seq(arch), tok, max_length=40, max_target_length=5)
    with caplog.at_level(logging.WARNING):
        batch = batcher.training_batch(["ab", "x" * 60], ["AB", "0123456789"], "en", "de")
    labels = [row[row != -100].tolist() for row in batch["labels"]]
    assert labels[0][-1] == tok.eos_token_id
    assert tok.decode(labels[1]) == "01234" and tok.eos_token_id not in labels[1]
    assert batch["input_ids"].shape[1] == 40
    assert "1 of 2 source sentences truncated to fit max_length=40" in caplog.text
    assert "1 of 2 targets truncated to max_target_length=5" in caplog.text


# -- chat templates -----------------------------------------------------------------------------------------------


def test_instruct_models_get_their_chat_template_for_generation_and_training():
    tok = chat_tokenizer()
    batcher = TranslationBatcher.for_model(llama(), tok, prompt=PROMPT, max_target_length=10)
    assert batcher.uses_chat_template
    examples = EXAMPLES[:2]
    (prompt,) = batcher.prompt_ids(["hi"], "en", "xx", examples)
    turns = PROMPT.messages("hi", "en", "xx", examples)
    expected = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    assert tok.decode(prompt) == expected
    assert expected == (
        "<s>user\nTranslate from English to Xish.\nEnglish: src0\nXish:</s>\n<s>assistant\ntgt0</s>\n"
        "<s>user\nEnglish: src1\nXish:</s>\n<s>assistant\ntgt1</s>\n<s>user\nEnglish: hi\nXish:</s>\n<s>assistant\n"
    )
    batch = batcher.training_batch(["hi"], ["HI"], "en", "xx", examples=examples)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert ids[: len(prompt)] == prompt  # training reads the generation prompt
    assert labels[: len(prompt)] == [-100] * len(prompt)
    assert tok.decode(labels[len(prompt) :]) == "HI</s>"  # the assistant turn up to its EOS, nothing after


@pytest.mark.parametrize("setting", ["off", "no template"])
def test_raw_prompts_without_a_template_or_when_turned_off(setting):
    tok = chat_tokenizer() if setting == "off" else char_tokenizer()
    prompt = TranslationPrompt(language_names=PROMPT.language_names, use_chat_template=setting != "off")
    batcher = TranslationBatcher.for_model(llama(), tok, prompt=prompt)
    assert not batcher.uses_chat_template
    (ids,) = batcher.prompt_ids(["hi"], "en", "xx", EXAMPLES[:1])
    assert tok.decode(ids) == "Translate from English to Xish.\nEnglish: src0\nXish: tgt0\nEnglish: hi\nXish:"
    batch = batcher.training_batch(["hi"], ["HI"], "en", "xx")
    assert tok.decode(batch["labels"][0][batch["labels"][0] != -100]) == " HI</s>"
