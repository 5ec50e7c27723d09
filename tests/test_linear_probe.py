"""Tests of the fast linear probe on tiny random models built from configs (CPU, seconds)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
import transformers as T
from peft import LoraConfig, get_peft_model
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hf_metatransfer.finetune.linear_probe import (
    DEFAULT_CS,
    extract_features,
    fast_linear_probe,
    find_probe_layer,
    fit_probe,
)

T.logging.set_verbosity_error()

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}


def _config(kind: str, num_labels: int) -> T.PretrainedConfig:
    if kind == "bert":
        return T.BertConfig(vocab_size=100, num_labels=num_labels, **TINY)
    if kind == "roberta":
        return T.RobertaConfig(vocab_size=100, num_labels=num_labels, **TINY)
    if kind == "gpt2":
        return T.GPT2Config(
            vocab_size=100,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            pad_token_id=0,
            num_labels=num_labels,
        )
    if kind == "llama":
        return T.LlamaConfig(
            vocab_size=100, num_key_value_heads=1, pad_token_id=0, num_labels=num_labels, **TINY
        )
    raise ValueError(kind)


def _model(kind: str, num_labels: int = 3, seed: int = 0) -> T.PreTrainedModel:
    torch.manual_seed(seed)
    return T.AutoModelForSequenceClassification.from_config(_config(kind, num_labels))


class PadCollator:
    """Pads input_ids with the model's pad id, on either side, as a tokenizer's collator would."""

    def __init__(self, pad_id: int, side: str = "right") -> None:
        self.pad_id, self.side = pad_id, side

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        assert all(set(r) <= {"input_ids", "label", "labels"} for r in rows), (
            "unused columns reached the collator"
        )
        width = max(len(r["input_ids"]) for r in rows)
        ids, mask = [], []
        for r in rows:
            pad = [self.pad_id] * (width - len(r["input_ids"]))
            ones, zeros = [1] * len(r["input_ids"]), [0] * len(pad)
            ids.append(list(r["input_ids"]) + pad if self.side == "right" else pad + list(r["input_ids"]))
            mask.append(ones + zeros if self.side == "right" else zeros + ones)
        labels = [r["labels"] if "labels" in r else r["label"] for r in rows]
        return {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.tensor(mask),
            "labels": torch.tensor(labels),
        }


def _pad_id(model: torch.nn.Module) -> int:
    return model.config.pad_token_id if model.config.pad_token_id is not None else 0


def _dataset(n: int, num_labels: int, seed: int = 0, separable: bool = False) -> datasets.Dataset:
    """Token ids 5..99 (never a pad id); separable: every token is the label's token, 5 + label."""
    rng = np.random.default_rng(seed)
    rows = {"input_ids": [], "label": [], "text": []}
    for _ in range(n):
        label = int(rng.integers(num_labels))
        length = int(rng.integers(4, 10))
        ids = rng.integers(5, 100, size=length)
        if separable:
            ids[:] = 5 + label
        rows["input_ids"].append(ids.tolist())
        rows["label"].append(label)
        rows["text"].append("a string column the collator cannot take")
    return datasets.Dataset.from_dict(rows)


def _model_predictions(model, dataset, collator, batch_size=16) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    preds, probs = [], []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collator(
                [
                    {"input_ids": r["input_ids"], "label": r["label"]}
                    for r in dataset.select(range(start, min(start + batch_size, len(dataset))))
                ]
            )
            batch.pop("labels")
            logits = model(**batch).logits
            preds.append(logits.argmax(-1))
            probs.append(logits.softmax(-1))
    return torch.cat(preds).numpy(), torch.cat(probs).numpy()


def _sklearn_reference(features, labels, C: float, fit_intercept: bool):
    return make_pipeline(
        StandardScaler(with_mean=fit_intercept),
        LogisticRegression(C=C, fit_intercept=fit_intercept, max_iter=1000),
    ).fit(features.double().numpy(), labels.numpy())


def _lora(model: T.PreTrainedModel, targets: list[str]):
    config = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=targets, modules_to_save=["classifier"])
    return get_peft_model(model, config)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("bert", "classifier"), ("roberta", "classifier.out_proj"), ("gpt2", "score"), ("llama", "score")],
)
def test_find_probe_layer(kind, expected):
    model = _model(kind)
    name, layer = find_probe_layer(model)
    assert name == expected
    assert layer is model.get_submodule(expected)
    assert layer.out_features == 3


def test_find_probe_layer_peft_picks_trainable_copy():
    model = _lora(_model("bert"), ["query", "value"])
    name, layer = find_probe_layer(model)
    assert name.endswith("classifier.modules_to_save.default")
    assert all(p.requires_grad for p in layer.parameters())


@pytest.mark.parametrize(
    "factory", [lambda: T.BertModel(_config("bert", 2)), lambda: T.BertForMaskedLM(_config("bert", 2))]
)
def test_no_matching_head_raises(factory):
    model = factory()
    with pytest.raises(ValueError, match=type(model).__name__):
        find_probe_layer(model)


@pytest.mark.parametrize(
    ("kind", "side"),
    [("bert", "right"), ("roberta", "right"), ("gpt2", "right"), ("gpt2", "left"), ("llama", "left")],
)
def test_probe_matches_sklearn_and_keeps_backbone(kind, side):
    model = _model(kind)
    collator = PadCollator(_pad_id(model), side)
    data = _dataset(60, 3)
    probe_name, layer = find_probe_layer(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    model.get_submodule(probe_name).eval()  # a mode of one's own must survive extraction

    info = fast_linear_probe(model, data, collator, C=1.0, batch_size=16)

    assert model.training and not model.get_submodule(probe_name).training
    assert info["layer"] == probe_name and info["C"] == 1.0 and info["num_examples"] == 60
    probe_params = {f"{probe_name}.{n}" for n, _ in layer.named_parameters()}
    for name, param in model.named_parameters():
        if name not in probe_params:
            assert torch.equal(param, before[name]), name
    assert not torch.equal(layer.weight, before[f"{probe_name}.weight"])

    features, labels = extract_features(model, data, collator, batch_size=7)  # other batching, same features
    assert features.shape == (60, 32) and labels.tolist() == data["label"]
    reference = _sklearn_reference(features, labels, C=1.0, fit_intercept=layer.bias is not None)
    preds, _ = _model_predictions(model, data, collator)
    np.testing.assert_array_equal(preds, reference.predict(features.double().numpy()))
    assert info["train_accuracy"] == pytest.approx((preds == labels.numpy()).mean())


def test_binary_probabilities_match_sklearn():
    model = _model("bert", num_labels=2)
    collator = PadCollator(0)
    data = _dataset(50, 2, seed=1)
    fast_linear_probe(model, data, collator, C=0.3)
    features, labels = extract_features(model, data, collator)
    reference = _sklearn_reference(features, labels, C=0.3, fit_intercept=True)
    preds, probs = _model_predictions(model, data, collator)
    np.testing.assert_array_equal(preds, reference.predict(features.double().numpy()))
    np.testing.assert_allclose(probs, reference.predict_proba(features.double().numpy()), atol=1e-5)


def test_peft_model_probe_loads_into_trainable_copy():
    model = _lora(_model("bert"), ["query", "value"])
    collator = PadCollator(0)
    data = _dataset(40, 3, seed=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    info = fast_linear_probe(model, data, collator, C=1.0)
    assert info["layer"].endswith("classifier.modules_to_save.default")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"{info['layer']}.weight", f"{info['layer']}.bias"}
    features, labels = extract_features(model, data, collator)
    reference = _sklearn_reference(features, labels, C=1.0, fit_intercept=True)
    preds, _ = _model_predictions(model, data, collator)
    np.testing.assert_array_equal(preds, reference.predict(features.double().numpy()))


@pytest.mark.parametrize(
    ("kind", "solver"), [("bert", "logistic"), ("gpt2", "logistic"), ("roberta", "lstsq")]
)
def test_separable_task_auto_c(kind, solver):
    model = _model(kind, num_labels=4)
    data = _dataset(120, 4, seed=3, separable=True)
    info = fast_linear_probe(model, data, PadCollator(_pad_id(model)), solver=solver, C="auto")
    assert info["C"] in DEFAULT_CS and info["solver"] == solver
    assert info["train_accuracy"] >= 0.95


def test_list_of_dicts_with_labels_column():
    model = _model("bert")
    rows = [{"input_ids": r["input_ids"], "labels": r["label"]} for r in _dataset(20, 3, seed=4)]
    features, labels = extract_features(model, rows, PadCollator(0), batch_size=8)
    assert features.shape == (20, 32) and labels.tolist() == [r["labels"] for r in rows]


def test_absent_class_is_never_predicted():
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.normal(size=(60, 8))).float()
    y = torch.from_numpy(rng.integers(0, 3, size=60))
    weight, bias = fit_probe(x, y, num_labels=4, C=1.0)
    assert weight.shape == (4, 8) and torch.all(weight[3] == 0)
    reference = _sklearn_reference(x, y, C=1.0, fit_intercept=True)
    np.testing.assert_array_equal(
        (x @ weight.T + bias).argmax(-1).numpy(), reference.predict(x.double().numpy())
    )


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_lstsq_matches_numpy_closed_form(fit_intercept):
    rng = np.random.default_rng(6)
    x = rng.normal(loc=2.0, scale=rng.uniform(0.5, 3.0, size=10), size=(80, 10))
    y = rng.integers(0, 3, size=80)
    C = 0.5
    weight, bias = fit_probe(
        torch.from_numpy(x).float(), torch.from_numpy(y), 3, solver="lstsq", C=C, fit_intercept=fit_intercept
    )

    mu = x.mean(0) if fit_intercept else np.zeros(10)
    sd = x.std(0)
    xs = (x - mu) / sd
    targets = np.eye(3)[y]
    t_mean = targets.mean(0) if fit_intercept else np.zeros(3)
    w_std = np.linalg.solve(xs.T @ xs + np.eye(10) / C, xs.T @ (targets - t_mean)).T
    w = w_std / sd
    np.testing.assert_allclose(weight.numpy(), w, rtol=1e-4, atol=1e-5)
    if fit_intercept:
        np.testing.assert_allclose(bias.numpy(), t_mean - w @ mu, rtol=1e-4, atol=1e-5)
    else:
        assert bias is None


def test_fit_probe_rejects_bad_input():
    x, y = torch.randn(10, 4), torch.tensor([0, 1] * 5)
    with pytest.raises(ValueError, match="solver"):
        fit_probe(x, y, 2, solver="sgd")
    with pytest.raises(ValueError, match="num_labels"):
        fit_probe(x, y, 1)
    with pytest.raises(ValueError, match="0..1"):
        fit_probe(x, y + 1, 2)


@pytest.mark.parametrize("solver", ["logistic", "lstsq"])
def test_rounding_noise_feature_gets_no_weight(solver):
    """A feature constant up to rounding (std 1e-20, as all-MiniLM-L6-v2 has one) is not blown up by
    standardising: its weight stays bounded, so a tiny change of that feature (the body moving during LP-FT) cannot
    swamp the logits. Dividing by its std gave weights of 1e30 and LP-FT fell to chance."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 4
    x = (
        torch.randn(40, 8, generator=gen, dtype=torch.float64)
        + torch.nn.functional.one_hot(y, 8).double() * 6
    )
    x[:, 5] = 1e-20 * torch.randn(40, generator=gen, dtype=torch.float64)
    weight, bias = fit_probe(x, y, 4, solver=solver)
    assert torch.isfinite(weight).all() and weight.abs().max() < 100
    moved = x.clone()
    moved[:, 5] += 1e-3
    np.testing.assert_array_equal(
        (x.float() @ weight.T + bias).argmax(-1).numpy(), (moved.float() @ weight.T + bias).argmax(-1).numpy()
    )
    assert ((x.float() @ weight.T + bias).argmax(-1) == y).float().mean() == 1.0
