"""A model adapted to one task saves as a normal HF checkpoint and predicts what the algorithm predicted."""

import pytest
import torch
import transformers as T
from peft import LoraConfig, PeftModel, get_peft_model

from hf_metatransfer.meta import (
    FOMAML,
    MetaSGD,
    NearestCentroid,
    ProtoNets,
    TransductivePrototypes,
    adapted_model,
)
from hf_metatransfer.pooling import MeanPoolBertForSequenceClassification
from tests.test_meta_algorithms import task, tiny_bert


def inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def tiny_mean_pool(n_way=3, seed=0):
    torch.manual_seed(seed)
    cfg = T.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
                       num_labels=n_way, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return MeanPoolBertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("algorithm", [FOMAML(inner_steps=3, inner_lr=0.5, fast_weights="top_k"),
                                       MetaSGD(inner_steps=2, inner_lr=0.3, fast_weights="head")])  # fmt: skip
def test_inner_loop_adapted_model_reloads_and_predicts_as_the_algorithm(tmp_path, algorithm):
    model = tiny_bert()
    support, query = task(1)
    algorithm.setup(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = algorithm.predict(model, support, query)
    adapted = adapted_model(model, algorithm, support)
    adapted.save_pretrained(tmp_path)
    reloaded = T.AutoModelForSequenceClassification.from_pretrained(tmp_path, use_safetensors=True).eval()
    with torch.no_grad():
        got = reloaded(**inputs(query)).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, model(**inputs(query)).logits, atol=1e-3)  # it did adapt
    assert all(
        torch.equal(before[n], p) for n, p in model.named_parameters()
    )  # the initialisation is untouched
    moved = {n for n, p in adapted.named_parameters() if not torch.equal(before[n], p)}
    assert moved and moved <= set(algorithm.fast)


def test_lora_adapted_model_saves_the_adapted_adapter(tmp_path):
    lora = LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=2, init_lora_weights=False)
    model = get_peft_model(tiny_bert(), lora).eval()
    algorithm = FOMAML(inner_steps=2, inner_lr=0.5, fast_weights="lora")
    algorithm.setup(model)
    support, query = task(2)
    expected = algorithm.predict(model, support, query)
    adapted_model(model, algorithm, support).save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists() and not (tmp_path / "model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(tiny_bert(), tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs(query)).logits, expected, atol=1e-5)


@pytest.mark.parametrize("projection_dim", [0, 8])
def test_protonets_adapted_model_puts_the_prototypes_in_the_head(tmp_path, projection_dim):
    model = tiny_mean_pool()
    algorithm = ProtoNets(projection_dim=projection_dim)
    algorithm.setup(model)
    if algorithm.projection is not None:
        with torch.no_grad():
            algorithm.projection.bias.normal_()  # a bias must cancel, not leak into the head
    support, query = task(3)
    expected = torch.log_softmax(algorithm.predict(model, support, query), -1)
    adapted_model(model, algorithm, support).save_pretrained(tmp_path)
    reloaded = MeanPoolBertForSequenceClassification.from_pretrained(tmp_path, use_safetensors=True).eval()
    with torch.no_grad():
        got = torch.log_softmax(reloaded(**inputs(query)).logits, -1)
    assert torch.allclose(got, expected, atol=1e-4)


def test_protonets_adapted_model_needs_a_mean_pooled_head_with_n_way_labels():
    support, _ = task(4)
    algorithm = ProtoNets()
    stock = tiny_bert()  # its head reads the pooler, not the mean of the token states
    algorithm.setup(stock)
    with pytest.raises(ValueError, match="MeanPoolBertForSequenceClassification"):
        adapted_model(stock, algorithm, support)
    wrong_size = tiny_mean_pool(n_way=5)
    with pytest.raises(ValueError, match="num_labels=3"):
        adapted_model(wrong_size, algorithm, support)


@pytest.mark.parametrize("method", [NearestCentroid(), TransductivePrototypes()])
def test_methods_no_linear_head_reproduces_are_refused_with_the_alternative(method):
    support, _ = task(5)
    with pytest.raises(ValueError, match=f"{method.name} normalises.*algorithm=ProtoNets"):
        adapted_model(tiny_mean_pool(), method, support)
