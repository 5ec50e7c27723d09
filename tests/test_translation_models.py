"""Few-shot translation models: prompts and batches, generation, adaptation, scoring, meta-training over pairs.

Encoder-decoder paths run on tiny random Marian and T5 configs, decoder-only on a tiny random Llama; all with a
character-level tokenizer built here (no download).
"""

from __future__ import annotations

import logging

import datasets
import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from hf_metatransfer.episodes import TranslationTaskSampler
from hf_metatransfer.meta import MetaTrainer, MetaTrainingConfig, build_algorithm
from hf_metatransfer.translation import (
    InContext,
    SupportFineTuning,
    TaskTexts,
    TranslationBatcher,
    TranslationPrompt,
    ZeroShot,
    add_lora,
    corpus_scores,
    evaluate_translation,
    language_name,
    restored,
    translate,
)

CHARS = [chr(c) for c in range(32, 127)]  # printable ASCII: every test sentence is made of these


def char_tokenizer(pad: bool = True) -> T.PreTrainedTokenizerFast:
    """One token a character, plus pad / eos / bos; ids < 100 so a vocabulary of 128 holds them."""
    specials = ["<pad>", "</s>", "<s>"]
    vocab = {tok: i for i, tok in enumerate(specials + CHARS + ["\n"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    kwargs = {"pad_token": "<pad>"} if pad else {}
    return T.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", bos_token="<s>", **kwargs)


def tiny_llama(seed: int = 0) -> T.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = T.LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, intermediate_size=48, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                           max_position_embeddings=512)  # fmt: skip
    return T.LlamaForCausalLM(config)


def tiny_seq2seq(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=128, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    if arch == "t5":
        return T.T5ForConditionalGeneration(
            T.T5Config(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=2, **common)
        )
    config = T.MarianConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                            decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=48,
                            max_position_embeddings=256, scale_embedding=True, **common)  # fmt: skip
    # scale_embedding as in the Opus-MT checkpoints: unscaled tiny embeddings drown in the sinusoidal positions
    return T.MarianMTModel(config)


def parallel(n: int = 24, targets=("xx", "yy", "zz")) -> datasets.Dataset:
    """English words into made-up languages: xx reverses the word, yy upper-cases it, zz doubles it, ww
    swaps its case."""
    words = [f"w{i}{'abcdefgh'[i % 8]}" for i in range(n)]
    rule = {"xx": lambda w: w[::-1], "yy": str.upper, "zz": lambda w: w + w, "ww": str.swapcase}
    rows = [{"source": w, "target": rule[lang](w), "source_lang": "en", "target_lang": lang, "id": f"m{i}"}
            for lang in targets for i, w in enumerate(words)]  # fmt: skip
    return datasets.Dataset.from_list(rows)


def task_texts(lang: str = "xx", k: int = 4, q: int = 3) -> TaskTexts:
    rows = parallel().filter(lambda r: r["target_lang"] == lang)
    src, tgt = rows["source"], rows["target"]
    return TaskTexts("en", lang, src[:k], tgt[:k], src[k : k + q], tgt[k : k + q])


PROMPT = TranslationPrompt(language_names={"xx": "Xish", "yy": "Yish", "zz": "Zish"})


@pytest.fixture
def causal():
    model = tiny_llama()
    return model, TranslationBatcher.for_model(model, char_tokenizer(), prompt=PROMPT, max_target_length=16)


# -- prompts and batches ------------------------------------------------------------------------------------------


def test_prompt_names_languages_and_puts_examples_before_the_query():
    prompt = TranslationPrompt().prompt("Save", "en", "de", examples=[("Delete", "Löschen")])
    assert (
        prompt
        == "Translate from English to German.\nEnglish: Delete\nGerman: Löschen\nEnglish: Save\nGerman:"
    )
    assert language_name("pt_BR") == "Brazilian Portuguese"  # Django's locale table
    assert language_name("xx") == "xx" and language_name("xx", {"xx": "Xish"}) == "Xish"
    assert (
        TranslationPrompt.for_model_type("t5").seq2seq_source("hi", "en", "de")
        == "translate English to German: hi"
    )
    assert TranslationPrompt.for_model_type("marian").seq2seq_source("hi", "en", "de") == "hi"


def test_causal_batch_labels_only_the_target_and_its_eos(causal):
    model, batcher = causal
    tok = batcher.tokenizer
    batch = batcher.training_batch(["ab", "abcdef"], ["X", "YZ"], "en", "xx")
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    for row, target in enumerate(["X", "YZ"]):
        labelled = batch["labels"][row][batch["labels"][row] != -100]
        assert tok.decode(labelled[:-1]) == " " + target and labelled[-1] == tok.eos_token_id
        # the labelled positions are exactly the last tokens of the unpadded sequence
        length = int(batch["attention_mask"][row].sum())
        assert torch.equal(batch["input_ids"][row, length - len(labelled) : length], labelled)
        prompt = tok.decode(batch["input_ids"][row, : length - len(labelled)])
        assert prompt.endswith("Xish:") and "Translate from English to Xish." in prompt
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()  # padding is never a target


def test_generation_batch_is_left_padded_for_causal_lms(causal):
    _, batcher = causal
    batch = batcher.generation_batch(["a", "abcdefgh"], "en", "xx")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1
    assert batch["attention_mask"][1].all()
    assert "labels" not in batch


def test_seq2seq_batch_encodes_source_with_prefix_and_target_as_labels():
    model = tiny_seq2seq("t5")
    tok = char_tokenizer()
    batcher = TranslationBatcher.for_model(model, tok, prompt=TranslationPrompt.for_model_type("t5"))
    batch = batcher.training_batch(["ab", "abcd"], ["B", "DCBA"], "en", "de")
    assert (
        tok.decode(batch["input_ids"][0][batch["attention_mask"][0] == 1])
        == "translate English to German: ab"
    )
    assert tok.decode(batch["labels"][1][batch["labels"][1] != -100], skip_special_tokens=True) == "DCBA"
    assert (
        batch["labels"].shape == (2, 5) and (batch["labels"][0, 2:] == -100).all()
    )  # "B" + eos, then padding


def test_long_inputs_are_truncated_with_a_warning_keeping_the_cue(causal, caplog):
    model, _ = causal
    batcher = TranslationBatcher.for_model(
        model, char_tokenizer(), prompt=PROMPT, max_length=60, max_target_length=8
    )
    with caplog.at_level(logging.WARNING):
        batch = batcher.training_batch(["a" * 200], ["b" * 50], "en", "xx")
    assert (
        "truncated" in caplog.text and "max_length=60" in caplog.text and "max_target_length=8" in caplog.text
    )
    assert batch["input_ids"].shape[1] == 60
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    # a cut target ends without EOS: the model must not learn to stop mid-sentence
    assert (
        batcher.tokenizer.decode(labelled) == " " + "b" * 7 and batcher.tokenizer.eos_token_id not in labelled
    )
    prompt = batcher.tokenizer.decode(batch["input_ids"][0][: 60 - 8])
    assert prompt.startswith("Translate from English to Xish.") and prompt.endswith("Xish:")


def test_bad_input_gets_clear_errors(causal):
    model, batcher = causal
    with pytest.raises(ValueError, match="no pad token.*tokenizer.pad_token = tokenizer.eos_token"):
        TranslationBatcher.for_model(model, char_tokenizer(pad=False))
    with pytest.raises(ValueError, match=r"en->xx: empty target sentence\(s\) at position\(s\) \[1\]"):
        batcher.training_batch(["a", "b"], ["A", "  "], "en", "xx")
    with pytest.raises(ValueError, match="empty source"):
        batcher.generation_batch([""], "en", "xx")
    with pytest.raises(ValueError, match="2 sources but 1 targets"):
        batcher.training_batch(["a", "b"], ["A"], "en", "xx")
    with pytest.raises(ValueError, match="max_target_length"):
        TranslationBatcher.for_model(model, char_tokenizer(), max_length=16, max_target_length=16)
    with pytest.raises(ValueError, match=r"K \+ Q = 30 sentence pairs \(en->xx: 24"):
        TranslationTaskSampler(parallel(), k_support=20, q_query=10)
    with pytest.raises(ValueError, match="decoder-only"):
        InContext().translations(tiny_seq2seq("marian"), TranslationBatcher.for_model(tiny_seq2seq("marian"),
                                 char_tokenizer()), task_texts())  # fmt: skip


# -- generation and adaptation ------------------------------------------------------------------------------------


def test_batched_generation_equals_one_at_a_time(causal):
    model, batcher = causal
    sources = ["a", "abcdefghij", "abc"]
    batched = translate(model, batcher, sources, "en", "xx", batch_size=3, max_new_tokens=6, progress=False)
    alone = [translate(model, batcher, [s], "en", "xx", max_new_tokens=6, progress=False)[0] for s in sources]
    assert batched == alone and len(batched) == 3


@pytest.mark.parametrize("family", ["llama", "marian", "t5"])
def test_fine_tuning_on_the_support_set_learns_the_pairs_and_restores_the_model(family):
    """Many steps on 4 pairs: greedy decoding then reproduces the targets (prompt, labels and decoding line up)."""
    model = tiny_llama() if family == "llama" else tiny_seq2seq(family)
    batcher = TranslationBatcher.for_model(model, char_tokenizer(), prompt=PROMPT, max_target_length=12)
    task = task_texts("xx", k=4, q=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = SupportFineTuning(steps=150, lr=3e-3, batch_size=4)
    with restored(model):
        losses = method.adapt(model, batcher, task)
        memorised = translate(model, batcher, task.support_sources, "en", "xx", progress=False)
    assert losses[-1] < 0.05 * losses[0]
    assert memorised == task.support_targets
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # restored bit for bit


def test_lora_adaptation_moves_only_the_adapter(causal):
    model, batcher = causal
    lora = add_lora(model, r=4, alpha=8)
    base = {n: p.detach().clone() for n, p in lora.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in lora.named_parameters() if "lora_" in n}
    SupportFineTuning(steps=3, lr=1e-2).adapt(lora, batcher, task_texts())
    assert all(torch.equal(p, base[n]) for n, p in lora.named_parameters() if "lora_" not in n)
    assert any(not torch.equal(p, lora_before[n]) for n, p in lora.named_parameters() if "lora_" in n)


def test_layerwise_lr_reaches_the_optimizer(causal, monkeypatch):
    model, batcher = causal
    seen = {}
    original = torch.optim.AdamW.__init__

    def spy(self, groups, *args, **kwargs):
        seen["lrs"] = sorted({g["lr"] for g in groups})
        original(self, groups, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", spy)
    SupportFineTuning(steps=1, lr=1e-3, layerwise_lr_decay=0.5).adapt(model, batcher, task_texts())
    # embeddings, 2 blocks, head: 4 depths -> lr * 0.5 ** d for d = 0..3
    assert seen["lrs"] == pytest.approx([1e-3 * 0.5**d for d in (3, 2, 1, 0)])


# -- scoring --------------------------------------------------------------------------------------------------------


def test_corpus_scores_are_sacrebleu_corpus_scores():
    import sacrebleu

    predictions, references = ["the cat sat", "a dog"], ["the cat sat down", "a dog"]
    scores = corpus_scores(predictions, references, "en")
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    assert corpus_scores(["你好世界"], ["你好世界"], "zh_Hans")["bleu"] == pytest.approx(100.0)


def test_every_method_is_scored_on_the_same_tasks_and_leaves_the_model_as_it_was(causal):
    model, _ = causal
    sampler = TranslationTaskSampler(parallel(), k_support=4, q_query=3, seed=1)
    batcher = TranslationBatcher.for_model(model, char_tokenizer(), prompt=PROMPT, texts=sampler.texts,
                                           max_target_length=8)  # fmt: skip
    tasks = sampler.batch(range(3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    results = [evaluate_translation(model, m, tasks, batcher, progress=False, max_new_tokens=6)
               for m in (ZeroShot(), InContext(), SupportFineTuning(steps=2, lr=1e-3))]  # fmt: skip
    pairs = [(t.source_lang, t.target_lang) for t in tasks]
    for result in results:
        assert result.tasks == 3 and [(r["source_lang"], r["target_lang"]) for r in result.per_task] == pairs
        assert 0 <= result.chrf <= 100 and result.chrf_ci95 >= 0 and result.seconds_per_task > 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# -- meta-learning over language pairs ------------------------------------------------------------------------------


def test_lm_task_loss_fomaml_gradient_is_the_query_gradient_at_the_adapted_weights(causal):
    model, batcher = causal
    torch.manual_seed(0)
    algorithm = build_algorithm("fomaml", inner_steps=1, inner_lr=0.1, loss="lm")
    algorithm.setup(model)
    t = task_texts()
    support = batcher.training_batch(t.support_sources, t.support_targets, "en", "xx")
    query = batcher.training_batch(t.query_sources, t.query_targets, "en", "xx")
    result = algorithm.task_gradient(model, support, query)

    reference = tiny_llama()
    reference.load_state_dict(model.state_dict())
    grads = torch.autograd.grad(reference(**support).loss, list(reference.parameters()))
    with torch.no_grad():
        for p, g in zip(reference.parameters(), grads):
            p -= 0.1 * g
    query_loss = reference(**query).loss
    expected = torch.autograd.grad(query_loss, list(reference.parameters()))
    names = [n for n, _ in model.named_parameters()]
    for name, g in zip(names, expected):
        torch.testing.assert_close(result.grads[name], g, rtol=1e-4, atol=1e-6)
    assert result.loss == pytest.approx(query_loss.item(), rel=1e-5)
    assert 0.0 <= result.accuracy <= 1.0


@pytest.mark.parametrize("algorithm", ["fomaml", "reptile"])
def test_meta_training_lora_over_language_pairs_saves_a_loadable_adapter(tmp_path, algorithm):
    from peft import PeftModel

    model = tiny_llama()
    lora = add_lora(model, r=4, alpha=8)
    base = {n: p.detach().clone() for n, p in lora.named_parameters() if "lora_" not in n}
    sampler = TranslationTaskSampler(parallel(), k_support=4, q_query=3, seed=0, languages=["xx", "yy"])
    batcher = TranslationBatcher.for_model(lora, char_tokenizer(), prompt=PROMPT, texts=sampler.texts,
                                           max_target_length=8)  # fmt: skip
    config = MetaTrainingConfig(output_dir=str(tmp_path), algorithm=algorithm, fast_weights="lora", task_loss="lm",
                                inner_steps=2, inner_lr=1e-2, meta_batch_size=2, max_steps=3, learning_rate=1e-2,
                                eval_steps=0, save_steps=0, logging_steps=1, disable_tqdm=True)  # fmt: skip
    state = MetaTrainer(lora, config, sampler, batcher).train()
    assert state.step == 3 and state.skipped_tasks == 0
    assert all(0.0 <= log["query_accuracy"] <= 1.0 for log in state.log_history)
    assert all(torch.equal(p, base[n]) for n, p in lora.named_parameters() if "lora_" not in n)
    assert any(p.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)  # B starts at zero

    reloaded = PeftModel.from_pretrained(tiny_llama(), str(tmp_path))
    for (n, p), (_, q) in zip(lora.named_parameters(), reloaded.named_parameters()):
        assert torch.equal(p, q), n
