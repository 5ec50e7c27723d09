"""Tiny random models built from configs: one per architecture family the layer map must read."""

from __future__ import annotations

import torch
import transformers as T

ARCHITECTURES = [
    "bert", "roberta", "xlm-roberta", "distilbert", "deberta-v2", "electra", "modernbert",
    "gpt2", "llama", "qwen2", "t5", "mt5", "marian", "bart",
]  # fmt: skip

#: Blocks each tiny model has, in depth order (encoder-decoder: encoder + decoder).
NUM_BLOCKS = {"t5": 5, "mt5": 4, "marian": 5, "bart": 4}

_ENC = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37)
_DEC = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, intermediate_size=37
)
_NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_model(arch: str, num_labels: int = 3, seed: int = 0) -> torch.nn.Module:
    """A sequence classifier (or seq2seq / causal LM where that is the natural head) with 3 blocks."""
    torch.manual_seed(seed)
    c = dict(vocab_size=128, pad_token_id=0, num_labels=num_labels)
    if arch == "bert":
        return T.BertForSequenceClassification(T.BertConfig(**_ENC, **_NO_DROPOUT, **c))
    if arch == "roberta":
        return T.RobertaForSequenceClassification(T.RobertaConfig(**_ENC, **_NO_DROPOUT, **c))
    if arch == "xlm-roberta":
        return T.XLMRobertaForSequenceClassification(T.XLMRobertaConfig(**_ENC, **_NO_DROPOUT, **c))
    if arch == "distilbert":
        cfg = T.DistilBertConfig(
            dim=32, n_layers=3, n_heads=2, hidden_dim=37, dropout=0.0, attention_dropout=0.0, **c
        )
        return T.DistilBertForSequenceClassification(cfg)
    if arch == "deberta-v2":
        return T.DebertaV2ForSequenceClassification(T.DebertaV2Config(**_ENC, **_NO_DROPOUT, **c))
    if arch == "electra":
        return T.ElectraForSequenceClassification(
            T.ElectraConfig(embedding_size=16, **_ENC, **_NO_DROPOUT, **c)
        )
    if arch == "modernbert":
        return T.ModernBertForSequenceClassification(T.ModernBertConfig(**_ENC, **c))
    if arch == "gpt2":
        return T.GPT2ForSequenceClassification(T.GPT2Config(n_embd=32, n_layer=3, n_head=2, **c))
    if arch == "llama":
        return T.LlamaForSequenceClassification(T.LlamaConfig(**_DEC, **c))
    if arch == "qwen2":
        return T.Qwen2ForSequenceClassification(T.Qwen2Config(**_DEC, **c))
    if arch == "t5":
        return T.T5ForConditionalGeneration(
            T.T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=3, num_heads=2, **c)
        )
    if arch == "mt5":
        return T.MT5ForConditionalGeneration(
            T.MT5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2, num_heads=2, **c)
        )
    seq2seq = dict(d_model=32, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                   decoder_ffn_dim=37, decoder_start_token_id=0, **c)  # fmt: skip
    if arch == "marian":
        return T.MarianMTModel(T.MarianConfig(encoder_layers=2, decoder_layers=3, **seq2seq))
    if arch == "bart":
        return T.BartForSequenceClassification(T.BartConfig(encoder_layers=2, decoder_layers=2, **seq2seq))
    raise ValueError(arch)


def num_blocks(arch: str) -> int:
    return NUM_BLOCKS.get(arch, 3)
