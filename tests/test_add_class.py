"""A class added to a prototype-headed model from a few examples: the old classes as they were, the new one as
ProtoNets would score it with the extended support set."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from hf_metatransfer.conventions import InputConventions
from hf_metatransfer.data import load_ha_intents, minilm_path
from hf_metatransfer.hub import push_folder
from hf_metatransfer.meta import ProtoNets, adapted_model, add_class, remove_class
from hf_metatransfer.pooling import MeanPoolBertForSequenceClassification, mean_pool
from hf_metatransfer.recipes.add_class import CARD_SECTION
from hf_metatransfer.recipes.add_class import cli as add_class_cli
from tests.hub_server import TOKEN, hub_fixture  # noqa: F401 - the fixture 'hub'

OLD = ("HassStartTimer", "HassShoppingListAddItem", "HassMediaPause")
NEW = "HassGetWeather"
K, Q = 8, 20


@pytest.fixture(scope="module")
def tokenizer() -> T.PreTrainedTokenizerBase:
    return T.AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def intents() -> dict[str, list[str]]:
    """K support then Q held-out English examples of each class used here."""
    ds = load_ha_intents(languages=["en"])
    return {name: [r["text"] for r in ds if r["intent"] == name][: K + Q] for name in (*OLD, NEW)}


def tokens(tokenizer, texts, labels=None) -> dict[str, torch.Tensor]:
    batch = dict(tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt"))
    return batch if labels is None else {**batch, "labels": torch.tensor(labels)}


def support_batch(tokenizer, intents, names) -> dict[str, torch.Tensor]:
    texts = [t for name in names for t in intents[name][:K]]
    return tokens(tokenizer, texts, [i for i in range(len(names)) for _ in range(K)])


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def prototype_model(encoder, algorithm, support, names) -> MeanPoolBertForSequenceClassification:
    """A ProtoNets-adapted model, as a user of adapted_model has it: prototypes in the head, named classes."""
    algorithm.setup(encoder)
    model = adapted_model(encoder, algorithm, support)
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    return model


@pytest.fixture
def minilm(tokenizer, intents) -> MeanPoolBertForSequenceClassification:
    encoder = MeanPoolBertForSequenceClassification.from_pretrained(minilm_path(), num_labels=len(OLD)).eval()
    return prototype_model(encoder, ProtoNets(), support_batch(tokenizer, intents, OLD), OLD)


def tiny_encoder(tokenizer, n_way=3, seed=0) -> MeanPoolBertForSequenceClassification:
    torch.manual_seed(seed)
    config = T.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=20, num_labels=n_way)  # fmt: skip
    return MeanPoolBertForSequenceClassification(config).eval()


def test_added_class_leaves_old_classes_and_scores_the_new_one_as_protonets(minilm, tokenizer, intents):
    model = minilm
    queries = tokens(tokenizer, [t for name in OLD for t in intents[name][K:]])
    new_queries = tokens(tokenizer, intents[NEW][K:])
    before = logits(model, queries)
    old_rows = (model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone())
    grown = add_class(model, tokenizer, NEW, intents[NEW][:K])
    assert grown is model and model.config.num_labels == 4 and model.config.id2label[3] == NEW
    assert model.config.label2id[NEW] == 3 and model.classifier.out_features == 4

    after = logits(model, queries)
    # the old rows are untouched: the same scores, up to rounding (a product with 4 weight rows may take another BLAS
    # kernel than one with 3 on some CPUs; the rows themselves are compared exactly)
    assert torch.equal(model.classifier.weight[:3], old_rows[0]) and torch.equal(
        model.classifier.bias[:3], old_rows[1]
    )
    torch.testing.assert_close(after[:, :3], before, rtol=1e-5, atol=1e-5)
    assert torch.equal(after.argmax(-1), before.argmax(-1))  # no old query moves to the new class
    recognised = (logits(model, new_queries).argmax(-1) == 3).float().mean()
    assert recognised >= 0.9  # on held-out examples (all of them, with these)

    # -||e - c||^2 up to the shared -||e||^2: ProtoNets on the support set extended with the new class
    extended = support_batch(tokenizer, intents, (*OLD, NEW))
    for batch in (queries, new_queries):
        expected = torch.log_softmax(ProtoNets().predict(model, extended, batch), -1)
        assert torch.allclose(torch.log_softmax(logits(model, batch), -1), expected, atol=1e-4)


def test_replace_recomputes_one_row_and_remove_drops_one(tokenizer, intents):
    names = ("timer", "shopping", "pause")
    model = prototype_model(
        tiny_encoder(tokenizer), ProtoNets(), support_batch(tokenizer, intents, OLD), names
    )
    rows, bias = model.classifier.weight.clone(), model.classifier.bias.clone()
    add_class(model, tokenizer, "shopping", intents[OLD[1]][K:], replace=True)
    assert model.config.num_labels == 3 and model.config.id2label[1] == "shopping"
    assert torch.equal(model.classifier.weight[[0, 2]], rows[[0, 2]]) and torch.equal(model.classifier.bias[[0, 2]], bias[[0, 2]])  # fmt: skip
    assert not torch.allclose(model.classifier.weight[1], rows[1])
    queries = tokens(tokenizer, intents[OLD[1]][K:])
    expected = ProtoNets().predict(
        model, tokens(tokenizer, intents[OLD[1]][K:], [0] * len(intents[OLD[1]][K:])), queries
    )[:, 0]
    prototype_logit = logits(model, queries)[:, 1]  # 2 c.e - ||c||^2 = -||e - c||^2 + ||e||^2
    norms = torch.stack([e.pow(2).sum() for e in embeddings(model, queries)])
    assert torch.allclose(prototype_logit - norms, expected, atol=1e-4)

    before = logits(model, queries)
    remove_class(model, "shopping")
    assert model.config.id2label == {0: "timer", 1: "pause"} and model.config.label2id == {
        "timer": 0,
        "pause": 1,
    }
    assert torch.equal(logits(model, queries), before[:, [0, 2]])


def embeddings(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return mean_pool(model.bert(**batch).last_hidden_state, batch["attention_mask"])


def test_examples_are_embedded_after_the_models_input_prefix(tokenizer, intents):
    model = prototype_model(tiny_encoder(tokenizer), ProtoNets(), support_batch(tokenizer, intents, OLD), OLD)
    InputConventions(prefix="query: ").attach_to(model)
    add_class(model, tokenizer, NEW, intents[NEW][:K], batch_size=3)
    prototype = embeddings(model, tokens(tokenizer, ["query: " + t for t in intents[NEW][:K]])).mean(0)
    assert torch.allclose(model.classifier.weight[3], 2 * prototype, atol=1e-5)
    assert torch.allclose(model.classifier.bias[3], -prototype.pow(2).sum(), atol=1e-5)


def test_a_projection_folded_into_the_head_is_needed_and_used(tokenizer, intents):
    algorithm = ProtoNets(projection_dim=8)
    support = support_batch(tokenizer, intents, OLD)
    encoder = tiny_encoder(tokenizer)
    model = prototype_model(encoder, algorithm, support, OLD)
    with pytest.raises(ValueError, match="projection"):
        add_class(model, tokenizer, NEW, intents[NEW][:K])
    add_class(model, tokenizer, NEW, intents[NEW][:K], projection=algorithm.projection)
    queries = tokens(tokenizer, [t for name in (*OLD, NEW) for t in intents[name][K:]])
    expected = torch.log_softmax(
        algorithm.predict(model, support_batch(tokenizer, intents, (*OLD, NEW)), queries), -1
    )
    assert torch.allclose(torch.log_softmax(logits(model, queries), -1), expected, atol=1e-4)


def test_refusals(tokenizer, intents):
    model = prototype_model(tiny_encoder(tokenizer), ProtoNets(), support_batch(tokenizer, intents, OLD), OLD)
    with pytest.raises(ValueError, match="already a class.*replace=True"):
        add_class(model, tokenizer, OLD[0], intents[OLD[0]][:K])
    with pytest.raises(ValueError, match="not a class of the model.*drop --replace"):
        add_class(model, tokenizer, NEW, intents[NEW][:K], replace=True)
    with pytest.raises(ValueError, match="at least 1 example"):
        add_class(model, tokenizer, NEW, [])
    with pytest.raises(ValueError, match="is not a class"):
        remove_class(model, NEW)
    assert model.config.num_labels == 3  # nothing refused changed the model

    trained = tiny_encoder(tokenizer)  # a mean-pooled model with a trained (here random) head
    with pytest.raises(ValueError, match="not a prototype head.*adapted_model"):
        add_class(trained, tokenizer, NEW, intents[NEW][:K])
    config = T.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=20, num_labels=3)  # fmt: skip
    stock = T.BertForSequenceClassification(config).eval()  # its head reads the pooler
    with pytest.raises(ValueError, match="MeanPoolBertForSequenceClassification"):
        add_class(stock, tokenizer, NEW, intents[NEW][:K])


def test_cli_saves_a_reloadable_folder_and_pushes_a_branch(hub, tokenizer, intents, tmp_path):
    model = prototype_model(tiny_encoder(tokenizer), ProtoNets(), support_batch(tokenizer, intents, OLD), OLD)
    source, out = tmp_path / "adapted", tmp_path / "with-weather"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    (source / "README.md").write_text("# intents\n\nA ProtoNets-adapted model.\n\n## Use\n\nLoad it.\n")
    push_folder(source, "tester/intents", token=TOKEN, endpoint=hub.url)
    main_before = hub.files("tester/intents")
    examples = tmp_path / "weather.txt"
    examples.write_text("\n".join(intents[NEW][:K]) + "\n\n")

    add_class_cli(["--model_name_or_path", str(source), "--label", "weather", "--examples", str(examples),
                   "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "tester/intents",
                   "--hub_revision", "add-weather", "--hub_token", TOKEN])  # fmt: skip
    reloaded = MeanPoolBertForSequenceClassification.from_pretrained(out).eval()
    assert (
        reloaded.config.id2label == {**dict(enumerate(OLD)), 3: "weather"} and reloaded.config.num_labels == 4
    )
    queries = tokens(tokenizer, intents[OLD[0]][K:])
    torch.testing.assert_close(logits(reloaded, queries)[:, :3], logits(model, queries), rtol=1e-5, atol=1e-5)
    card = (out / "README.md").read_text()
    assert (
        "## Use" in card
        and CARD_SECTION in card
        and "- added `weather`: " in card
        and f"of {K} examples" in card
    )

    assert hub.files("tester/intents") == main_before  # main is as it was
    branch = hub.files("tester/intents", revision="add-weather")
    assert b"weather" in branch["config.json"] and branch["README.md"] == card.encode()

    jsonl = tmp_path / "rain.jsonl"
    jsonl.write_text("\n".join(f'{{"text": "{t}"}}' for t in ("will it rain", "is rain expected")))
    add_class_cli(["--model_name_or_path", str(out), "--label", "weather", "--examples", str(jsonl), "--replace",
                   "--output_dir", str(tmp_path / "replaced")])  # fmt: skip
    card = (tmp_path / "replaced" / "README.md").read_text()
    assert card.count(CARD_SECTION) == 1 and "- replaced `weather`: " in card.split("- added `weather`")[1]
    with pytest.raises(ValueError, match="not saved with a head on the mean-pooled embedding"):
        stock = tmp_path / "stock"
        T.BertForSequenceClassification(model.config).save_pretrained(stock)
        add_class_cli(["--model_name_or_path", str(stock), "--label", "w", "--examples", str(examples),
                       "--output_dir", str(tmp_path / "x")])  # fmt: skip
