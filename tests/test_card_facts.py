"""Cards state only what happened: each recorded fact flipped moves the card, every snippet runs and predicts what
the package predicts, the Reproduce config repeats the run, and ``publish`` renders the card for its repo."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers as T
import yaml
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file

from hf_metatransfer.conventions import InputConventions
from hf_metatransfer.hub import MetaLearnedCardData, Result, load_card_data, push_folder, write_card
from hf_metatransfer.meta import MetaTestResult, MetaTrainer, MetaTrainingConfig
from hf_metatransfer.meta.trainer import ALGORITHM_STATE
from hf_metatransfer.recipes import meta_train, publish
from tests.hub_server import TOKEN, hub_fixture  # noqa: F401 - the fixture 'hub'
from tests.meta_fixtures import token_episodes
from tests.test_recipe_finetune import data_file, tiny_checkpoint  # noqa: F401 - the fixtures
from tests.test_stock_loading import word_tokenizer

TEXTS = [
    "play some jazz",
    "music album song",
    "turn the kitchen light off",
    "lamp on",
    "rain or sunny",
    "storm",
]
LABEL_IDS = [0, 0, 1, 1, 2, 2]
QUERY = "play the jazz album"


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def dropout_bert(n_way: int = 3) -> T.BertForSequenceClassification:
    """Dropout on: a snippet that adapted in training mode would not give the package's predictions."""
    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=20, num_labels=n_way, hidden_dropout_prob=0.3)  # fmt: skip
    return T.BertForSequenceClassification(config)


def meta_trained(tmp_path: Path, algorithm: str, **kwargs) -> tuple[MetaTrainer, Path]:
    """Two meta-steps of ``algorithm``; the folder holds what MetaTrainer wrote (model, state, card) + tokenizer."""
    train, _, collate = token_episodes()
    out = tmp_path / algorithm
    options = dict(inner_steps=2, inner_lr=0.3, meta_batch_size=2, max_steps=2, learning_rate=1e-2, eval_steps=0,
                   save_steps=0, disable_tqdm=True)  # fmt: skip
    config = MetaTrainingConfig(output_dir=str(out), algorithm=algorithm, hub_model_id=f"tester/{algorithm}",
                                **{**options, **kwargs})  # fmt: skip
    trainer = MetaTrainer(dropout_bert(), config, train, collate)
    trainer.train()
    word_tokenizer().save_pretrained(out)
    return trainer, out


@pytest.mark.parametrize(
    ("algorithm", "kwargs"),
    [("fomaml", {}), ("anil", {"fast_weights": "head"}), ("metasgd", {}), ("protonets", {"inner_steps": 0})],
)
@pytest.mark.parametrize("prefix", ["", "query: "])
def test_meta_trainers_card_snippet_predicts_what_the_package_predicts(
    hub, tmp_path, algorithm, kwargs, prefix
):
    """The card MetaTrainer writes, its snippet run against the pushed repo: the package's adapted weights and
    predictions (Meta-SGD with its learned per-parameter rates, dropout off as in meta-testing)."""
    trainer, out = meta_trained(tmp_path, algorithm, **kwargs)
    model, method = trainer.model.eval(), trainer.algorithm
    if algorithm == "metasgd":  # rates far from their start: a snippet using inner_lr would adapt otherwise
        with torch.no_grad():
            for rate in method.lrs:
                rate.uniform_(0.05, 0.6)
        trainer.save_model(out)
    if prefix:
        InputConventions(prefix=prefix).save(out)
    card = write_card(trainer.card_data(), out).read_text()
    push_folder(out, f"tester/{algorithm}", token=TOKEN, endpoint=hub.url)

    tokenizer = word_tokenizer()
    support = {**tokenizer([prefix + t for t in TEXTS], padding=True, return_tensors="pt"),
               "labels": torch.tensor(LABEL_IDS)}  # fmt: skip
    query = dict(tokenizer([prefix + QUERY], return_tensors="pt"))
    expected = method.predict(model, support, query).argmax(-1)
    snippet = code_blocks(card, "python")[0].replace('"a new sentence"', repr(QUERY))
    scope = {"texts": TEXTS, "label_ids": LABEL_IDS}
    exec(snippet, scope)
    assert torch.equal(scope["predictions"], expected)
    if algorithm == "protonets":
        return
    adapted = method.adapt(model, support, create_graph=False)
    got = dict(scope["model"].named_parameters())
    for name in method.fast:
        torch.testing.assert_close(got[name], adapted[name], rtol=1e-5, atol=1e-6)
    moved = [n for n in method.fast if not torch.equal(adapted[n], dict(model.named_parameters())[n])]
    assert moved, "the inner loop moved nothing: the test would not see a wrong learning rate"
    if algorithm == "anil":  # only the head adapts
        assert set(method.fast) == {"classifier.weight", "classifier.bias"}
        body = "bert.encoder.layer.0.attention.self.query.weight"
        assert torch.equal(got[body], dict(model.named_parameters())[body])
    if algorithm == "metasgd":
        assert "meta_algorithm.safetensors" in snippet
        assert set(load_file(out / ALGORITHM_STATE)) == {f"inner_lr.{n}" for n in method.fast}


def test_meta_trainer_writes_the_projects_card_with_the_base_models_hub_id(tmp_path):
    """Not PEFT's blank card, and the base named by the release a packaged folder rebuilds, not its local path."""
    from hf_metatransfer.episodes import TranslationTaskSampler
    from hf_metatransfer.translation import TranslationBatcher, add_lora
    from tests.test_translation_models import PROMPT, char_tokenizer, parallel, tiny_llama

    base_dir = tmp_path / "packaged-smollm2"
    tiny_llama().save_pretrained(base_dir)
    (base_dir / "hf_metatransfer_source.json").write_text(
        json.dumps({"from": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    )
    lora = add_lora(T.AutoModelForCausalLM.from_pretrained(base_dir), r=2, alpha=4)
    sampler = TranslationTaskSampler(parallel(), k_support=4, q_query=3, seed=0, languages=["xx", "yy"])
    batcher = TranslationBatcher.for_model(lora, char_tokenizer(), prompt=PROMPT, texts=sampler.texts,
                                           max_target_length=8)  # fmt: skip
    out = tmp_path / "out"
    config = MetaTrainingConfig(output_dir=str(out), algorithm="fomaml", fast_weights="lora", task_loss="lm",
                                inner_steps=1, inner_lr=1e-2, meta_batch_size=2, max_steps=2, learning_rate=1e-2,
                                eval_steps=0, save_steps=0, disable_tqdm=True)  # fmt: skip
    MetaTrainer(lora, config, sampler, batcher).train()
    card = ModelCard.load(out / "README.md")
    assert "More Information Needed" not in card.text and "hf-metatransfer" in card.data.tags
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    recorded = load_card_data(out)
    assert recorded.train_languages == ["xx", "yy"] and recorded.lora_r == 2 and recorded.meta_steps == 2


# -- facts flipped -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def intents():
    """Real intents, three languages, a few sentences each: what the recipe's card reads its split from."""

    def tasks(ep: meta_train.EpisodeArguments):
        from hf_metatransfer.episodes.presets import ha_intents_tasks

        return ha_intents_tasks(languages=ep.languages, seed=0, class_ratios=ep.class_ratios,
                                language_split=meta_train.language_split(ep), cap_per_intent=ep.cap_per_intent)  # fmt: skip

    return tasks


def recipe_card(tmp_path: Path, intents, model_name="embedded", algorithm="fomaml", **episode) -> str:
    """The card the meta-train recipe writes for these arguments (a tiny model stands in for the trained one)."""
    from hf_metatransfer.meta import build_algorithm

    ep = meta_train.EpisodeArguments(languages=["en", "de", "fr"], cap_per_intent=6, **episode)
    config = MetaTrainingConfig(output_dir=str(tmp_path / "out"), algorithm=algorithm, max_steps=7)
    method = build_algorithm(algorithm, **config.algorithm_kwargs())
    model = dropout_bert()
    method.setup(model)
    rows = [MetaTestResult("fomaml (meta-learned)", 0.6, 0.1, 0.1, 3, [0.5, 0.6, 0.7])]
    folder = tmp_path / "card"
    model_args = meta_train.ModelArguments(model_name_or_path=model_name)
    meta_train.write_card(
        folder, "tester/m", model_args, ep, config, model, method, intents(ep), rows, None, []
    )
    return (folder / "README.md").read_text()


def test_held_out_languages_are_called_unseen_only_when_they_were_held_out(tmp_path, intents):
    split = recipe_card(tmp_path / "a", intents, test_languages=["fr"], validation_languages=["de"])
    shared = recipe_card(tmp_path / "b", intents)
    assert "in languages unseen in meta-training too" in split
    assert "| evaluation languages (held out of meta-training) | fr |" in split
    assert "| meta-training languages | en |" in split
    assert "unseen in meta-training too" not in shared and "held out" not in shared
    assert "(not split: meta-training and evaluation episodes use the same languages)" in shared


def test_episode_kind_algorithm_shots_and_base_model_follow_the_run(tmp_path, intents):
    cross = recipe_card(tmp_path / "a", intents, mode="cross-lingual", support_languages=["en"],
                        query_languages=["de", "fr"], k_shot=2)  # fmt: skip
    assert "cross-lingual: support in en, queries in de, fr" in cross and "2-shot (K)" in cross
    assert ModelCard(cross).data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    mono = recipe_card(tmp_path / "b", intents, model_name="embedded-multilingual", mode="monolingual")
    assert "monolingual (support and queries in one language)" in mono and "cross-lingual" not in mono
    assert ModelCard(mono).data.base_model == "intfloat/multilingual-e5-small"
    local = recipe_card(tmp_path / "c", intents, model_name=str(tmp_path))  # a folder of one's own: no Hub id
    assert ModelCard(local).data.base_model is None
    metasgd = recipe_card(tmp_path / "d", intents, algorithm="metasgd")
    assert "meta_algorithm.safetensors" in metasgd and "meta_algorithm.safetensors" not in cross
    anil = recipe_card(tmp_path / "e", intents, algorithm="anil")
    assert "'classifier.weight', 'classifier.bias'" in anil and "every weight adapts" in cross


def test_reproduce_section_holds_the_model_the_data_and_no_destination(tmp_path, intents):
    text = recipe_card(tmp_path, intents, model_name="embedded-multilingual", k_shot=3, slots="strip")
    reproduce = yaml.safe_load(code_blocks(text, "yaml")[0])
    assert reproduce["model_name_or_path"] == "embedded-multilingual" and reproduce["languages"] == [
        "en",
        "de",
        "fr",
    ]
    assert reproduce["k_shot"] == 3 and reproduce["slots"] == "strip" and reproduce["cap_per_intent"] == 6
    assert reproduce["algorithm"] == "fomaml" and reproduce["max_steps"] == 7 and "seed" in reproduce
    assert not {"output_dir", "push_to_hub", "hub_model_id"} & set(reproduce)


def test_reproduce_config_run_again_gives_the_cards_metrics(tmp_path, tiny_checkpoint):  # noqa: F811
    """The card's YAML, given to the recipe with --config and another output_dir, gives the same results."""
    first = tmp_path / "first"
    meta_train.cli([
        "--model_name_or_path", str(tiny_checkpoint), "--languages", "en", "--cap_per_intent", "20", "--n_way", "3",
        "--k_shot", "2", "--q_query", "2", "--algorithm", "fomaml", "--inner_steps", "1", "--meta_batch_size", "2",
        "--max_steps", "2", "--eval_steps", "0", "--save_steps", "0", "--test_episodes", "3", "--seed", "5",
        "--baselines", "nearest-centroid", "--output_dir", str(first), "--disable_tqdm", "true",
    ])  # fmt: skip
    card = ModelCard.load(first / "README.md")
    config = tmp_path / "reproduce.yaml"
    config.write_text(code_blocks(card.text, "yaml")[0])
    second = tmp_path / "second"
    meta_train.cli(["--config", str(config), "--output_dir", str(second), "--disable_tqdm", "true"])
    again = ModelCard.load(second / "README.md")
    metrics = [(r.metric_name, r.metric_value) for r in card.data.eval_results]
    assert metrics and metrics == [(r.metric_name, r.metric_value) for r in again.data.eval_results]
    per_episode = [r["per_episode"] for r in json.loads((first / "results.json").read_text())["meta_test"]]
    assert per_episode == [
        r["per_episode"] for r in json.loads((second / "results.json").read_text())["meta_test"]
    ]


# -- publish renders the card for the repo it pushes to --------------------------------------------------------------


def recorded(tmp_path: Path) -> tuple[Path, MetaLearnedCardData]:
    folder = tmp_path / "run"
    dropout_bert().save_pretrained(folder)
    data = MetaLearnedCardData(model_id="run", algorithm="FOMAML", n_way=3, k_shot=2, language=["en"],
                               results=[Result.from_episodes("accuracy", [0.5, 0.7, 0.6], shots=2)])  # fmt: skip
    write_card(data, folder)
    return folder, data


def test_publish_renders_the_card_for_the_repo_and_languages_given(hub, tmp_path):
    folder, _ = recorded(tmp_path)
    publish.cli(["--folder", str(folder), "--repo_id", "tester/other-name", "--language", "de", "fr",
                 "--token", TOKEN])  # fmt: skip
    pushed = HfApi(endpoint=hub.url, token=TOKEN).hf_hub_download("tester/other-name", "README.md")
    card = ModelCard.load(pushed)
    assert card.text.lstrip().startswith("# tester/other-name") and '"tester/other-name"' in card.text
    assert '"run"' not in card.text and card.data.language == ["de", "fr"]
    assert card.data.model_name == "tester/other-name"
    assert Path(pushed).read_text() == (folder / "README.md").read_text()  # the local copy is what was pushed
    assert load_card_data(folder).model_id == "tester/other-name"


def test_publish_keeps_a_hand_edited_card_and_sets_only_its_metadata(hub, tmp_path, caplog):
    folder, _ = recorded(tmp_path)
    card = folder / "README.md"
    card.write_text(card.read_text() + "\nA note written by hand.\n")
    with caplog.at_level(logging.WARNING):
        publish.cli(
            ["--folder", str(folder), "--repo_id", "tester/edited", "--language", "it", "--token", TOKEN]
        )
    text = Path(
        HfApi(endpoint=hub.url, token=TOKEN).hf_hub_download("tester/edited", "README.md")
    ).read_text()
    assert "A note written by hand." in text and ModelCard(text).data.language == ["it"]
    assert "edited by hand" in caplog.text and "--regenerate_card" in caplog.text
    publish.cli(
        ["--folder", str(folder), "--repo_id", "tester/edited", "--regenerate_card", "--token", TOKEN]
    )
    assert "A note written by hand." not in card.read_text() and "# tester/edited" in card.read_text()


def test_card_data_round_trips(tmp_path):
    folder, data = recorded(tmp_path)
    loaded = load_card_data(folder)
    assert isinstance(loaded, MetaLearnedCardData) and isinstance(loaded.results[0], Result)
    assert loaded == replace(data, input_prefix="")  # write_card filled the prefix from the folder (none)


# -- the fine-tuned card ------------------------------------------------------------------------------------------


def test_finetune_reproduce_config_gives_the_cards_metrics(tmp_path, tiny_checkpoint, data_file):  # noqa: F811
    from hf_metatransfer.recipes.finetune import cli as finetune

    first = tmp_path / "first"
    finetune(["--model_name_or_path", str(tiny_checkpoint), "--dataset_name", "json", "--data_files", str(data_file),
              "--text_column", "sentence", "--label_column", "topic", "--train_examples_per_class", "4",
              "--validation_examples_per_class", "1", "--num_train_epochs", "2", "--save_strategy", "no",
              "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--seed", "3",
              "--learning_rate", "1e-3", "--lp_ft", "true", "--linear_probe", "lstsq", "--output_dir", str(first)])  # fmt: skip
    card = ModelCard.load(first / "README.md")
    reproduce = yaml.safe_load(code_blocks(card.text, "yaml")[0])
    assert reproduce["model_name_or_path"] == str(tiny_checkpoint) and reproduce["text_column"] == "sentence"
    assert reproduce["lp_ft"] is True and "output_dir" not in reproduce
    config = tmp_path / "reproduce.yaml"
    config.write_text(code_blocks(card.text, "yaml")[0])
    second = tmp_path / "second"
    finetune(["--config", str(config), "--output_dir", str(second), "--disable_tqdm", "true"])
    again = ModelCard.load(second / "README.md")
    metrics = [(r.metric_name, r.metric_value) for r in card.data.eval_results if r.dataset_split == "test"]
    assert metrics and metrics == [
        (r.metric_name, r.metric_value) for r in again.data.eval_results if r.dataset_split == "test"
    ]


def test_fine_tuned_card_snippets_run(hub, tmp_path, monkeypatch):
    """The card the trainer writes: its pipeline call classifies as the model does; its adapt snippet trains."""
    import datasets

    from tests.test_stock_loading import TEXTS as WORDS_TEXTS
    from tests.test_stock_loading import fine_tuned

    tokenizer = word_tokenizer()
    folder = fine_tuned(tmp_path / "ft", tokenizer, lp_ft=True)
    data = load_card_data(folder)
    write_card(replace(data, model_id="tester/ft"), folder)
    push_folder(folder, "tester/ft", token=TOKEN, endpoint=hub.url)
    use, adapt = code_blocks((folder / "README.md").read_text(), "python")
    scope: dict = {}
    exec(
        use.replace('classifier("Turn on the kitchen lights")', f"result = classifier({WORDS_TEXTS[1]!r})"),
        scope,
    )
    model = T.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        best = model(**tokenizer([WORDS_TEXTS[1]], return_tensors="pt")).logits.argmax(-1).item()
    assert scope["result"][0]["label"] == model.config.id2label[best]
    monkeypatch.chdir(tmp_path)
    rows = {"text": WORDS_TEXTS * 2, "labels": [0, 1, 0, 1, 0] * 2}
    scope = {
        "train": datasets.Dataset.from_dict(rows),
        "validation": datasets.Dataset.from_dict(rows),
        "NUM_LABELS": 2,
    }
    exec(adapt, scope)
    assert scope["trainer"].state.global_step > 0 and scope["model"].config.num_labels == 2


@pytest.mark.parametrize("kind", ["fomaml", "protonets", "lora"])
def test_adapted_models_snippet_loads_the_adapted_model(hub, tmp_path, kind):
    """The card's "Adapted models" block, run against the repo, gives the adapted model's logits."""
    from peft import LoraConfig, get_peft_model

    from hf_metatransfer.hub import push_adapted
    from hf_metatransfer.meta import FOMAML, ProtoNets, adapted_model
    from tests.meta_fixtures import tiny_bert
    from tests.test_meta_adapted import tiny_mean_pool
    from tests.test_stock_loading import save, support

    tok, push, repo = (
        word_tokenizer(),
        {"token": TOKEN, "endpoint": hub.url, "backoff": 0.01},
        f"tester/{kind}",
    )
    init = tiny_mean_pool() if kind == "protonets" else tiny_bert()
    push_folder(save(init, tok, tmp_path / "init"), repo, **push)
    if kind == "lora":
        base = T.AutoModelForSequenceClassification.from_pretrained(repo)
        peft = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=2,
                                               init_lora_weights=False)).eval()  # fmt: skip
        method = FOMAML(inner_steps=1, inner_lr=0.5, fast_weights="lora")
        method.setup(peft)
        adapted = adapted_model(peft, method, support(tok))
        adapted.save_pretrained(tmp_path / "adapted")
    else:
        method = ProtoNets() if kind == "protonets" else FOMAML(inner_steps=1, inner_lr=0.5)
        method.setup(init)
        adapted = adapted_model(init, method, support(tok))
        save(adapted, tok, tmp_path / "adapted")
    push_adapted(tmp_path / "adapted", repo, "episode-0", **push)
    data = MetaLearnedCardData(model_id=repo, algorithm="ProtoNets" if kind == "protonets" else "FOMAML",
                               adapted=["episode-0"], adapted_are_adapters=kind == "lora")  # fmt: skip
    snippet = code_blocks(str(write_card(data, tmp_path / "card").read_text()), "python")[1]
    scope: dict = {}
    exec(snippet, scope)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = adapted.eval()(**batch).logits
        got = scope["model"].eval()(**batch).logits
    torch.testing.assert_close(got, expected)
