"""A user's own episodes in one call: every input form gives the same episodes and the same meta-test scores as
the manual route (Dataset, tokenize_dataset, TokenStore, EpisodeCollator, Episodes of row numbers), and the
meta-test recipe scores a JSONL of them without the intents."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch
import transformers as T

from hf_metatransfer.data import minilm_path
from hf_metatransfer.episodes import (
    Episode,
    EpisodeCollator,
    TokenStore,
    episodes_to_dataset,
    saved_episodes,
    tokenize_dataset,
    user_episodes,
)
from hf_metatransfer.meta import NearestCentroid, meta_test
from tests.test_recipe_finetune import tiny_checkpoint  # noqa: F401 - the fixture

WORDS = {"weather": ["sunny", "rain", "cloudy", "storm"], "music": ["song", "album", "play", "guitar"],
         "timer": ["minutes", "alarm", "seconds", "clock"], "lights": ["lamp", "bulb", "dim", "bright"]}  # fmt: skip
# Three episodes: their classes (in the order of first appearance), 2 support and 2 query sentences a class.
CLASSES = [["weather", "music", "timer"], ["lights", "weather"], ["timer", "lights", "music"]]


def sentence(label: str, i: int, episode: int) -> str:
    words = WORDS[label]
    return f"{words[i % 4]} {words[(i + episode + 1) % 4]} now"


def episodes_as_pairs() -> list[dict]:
    """The episodes as lists of (text, label) pairs, classes interleaved; episodes 0 and 2 share sentences."""
    return [{side: [(sentence(label, i + offset, e % 2), label) for i in range(2) for label in classes]
             for side, offset in (("support", 0), ("query", 2))} for e, classes in enumerate(CLASSES)]  # fmt: skip


def table_rows() -> list[dict]:
    """The same episodes as one table for the whole split."""
    return [{"episode": f"ep{e}", "split": side, "text": text, "label": label}
            for e, episode in enumerate(episodes_as_pairs()) for side in ("support", "query")
            for text, label in episode[side]]  # fmt: skip


def write_jsonl(path, episodes: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(e) for e in episodes) + "\n")
    return str(path)


def written(path: Path, write: Callable[[Path], object]) -> Path:
    write(path)
    return path


def as_dicts(episodes: list[dict]) -> list[dict]:
    return [{s: [{"text": t, "label": y} for t, y in e[s]] for s in ("support", "query")} for e in episodes]


def side_tables(episodes: list[dict], table: type) -> list[dict]:
    """Each support and query set as its own Dataset or DataFrame."""
    build = datasets.Dataset.from_list if table is datasets.Dataset else pd.DataFrame
    return [{s: build(rows[s]) for s in ("support", "query")} for rows in as_dicts(episodes)]


@pytest.fixture(scope="module")
def tokenizer():
    return T.AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=20, max_position_embeddings=64, num_labels=3)  # fmt: skip
    return T.BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def reference(tokenizer, model):
    user = user_episodes(episodes_as_pairs(), tokenizer)
    return user, meta_test(model, NearestCentroid(), user, progress=False)


FORMS = {  # id: tmp_path -> data
    "pairs": lambda tmp: episodes_as_pairs(),
    "dicts": lambda tmp: as_dicts(episodes_as_pairs()),
    "datasets-per-side": lambda tmp: side_tables(episodes_as_pairs(), datasets.Dataset),
    "dataframes-per-side": lambda tmp: side_tables(episodes_as_pairs(), pd.DataFrame),
    "table-rows": lambda tmp: table_rows(),
    "table-dataset": lambda tmp: datasets.Dataset.from_list(table_rows()),
    "table-dataframe": lambda tmp: pd.DataFrame(table_rows()),
    "jsonl-pairs": lambda tmp: write_jsonl(tmp / "episodes.jsonl", episodes_as_pairs()),
    "jsonl-dicts": lambda tmp: write_jsonl(tmp / "episodes.jsonl", as_dicts(episodes_as_pairs())),
    "jsonl-table": lambda tmp: write_jsonl(tmp / "rows.jsonl", table_rows()),
    "json": lambda tmp: written(tmp / "e.json", lambda p: p.write_text(json.dumps(episodes_as_pairs()))),
    "csv-table": lambda tmp: written(
        tmp / "rows.csv", lambda p: pd.DataFrame(table_rows()).to_csv(p, index=False)
    ),
    "parquet-table": lambda tmp: written(tmp / "rows.parquet", pd.DataFrame(table_rows()).to_parquet),
    "saved-table": lambda tmp: written(tmp / "t", datasets.Dataset.from_list(table_rows()).save_to_disk),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_input_form_gives_the_same_episodes_and_accuracy(form, tmp_path, tokenizer, model, reference):
    expected, scored = reference
    user = user_episodes(FORMS[form](tmp_path), tokenizer)
    assert [e.to_dict() for e in user] == [e.to_dict() for e in expected]
    assert user.dataset["text"] == expected.dataset["text"]
    assert meta_test(model, NearestCentroid(), user, progress=False).per_episode == scored.per_episode


def test_labels_map_to_episode_labels_in_support_order(reference):
    user, _ = reference
    first, second = user[0], user[1]
    assert first.class_names == ("weather", "music", "timer") and second.class_names == ("lights", "weather")
    assert first.support_labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert second.query_labels.tolist() == [0, 1, 0, 1]
    assert second.classes.tolist() == [3, 0]  # numbered across the set: 'weather' is class 0 everywhere
    assert (
        len(user.dataset) == len(set(user.dataset["text"])) < sum(len(e.support) + len(e.query) for e in user)
    )
    assert len(user) == 3 and len(user[1:]) == 2 and user[1:].collate is user.collate


def test_integer_labels_give_the_same_episodes_as_string_labels(tokenizer, model, reference):
    expected, scored = reference
    ids = {name: 10 + i for i, name in enumerate(WORDS)}
    numbered = [{s: [(t, ids[y]) for t, y in e[s]] for s in e} for e in episodes_as_pairs()]
    user = user_episodes(numbered, tokenizer)
    fields = ("classes", "support", "support_labels", "query", "query_labels")
    assert [[getattr(e, f).tolist() for f in fields] for e in user] == [
        [getattr(e, f).tolist() for f in fields] for e in expected
    ]
    assert user[0].class_names == ("10", "11", "12")
    assert meta_test(model, NearestCentroid(), user, progress=False).per_episode == scored.per_episode


def test_the_one_call_route_scores_as_the_manual_route(tmp_path, tokenizer, model, reference):
    """The same sentences through a Dataset of another row order, tokenize_dataset, TokenStore, EpisodeCollator
    and hand-built Episodes: the same tensors and the same accuracies; saved, they load back in one call too."""
    user, scored = reference
    pairs = episodes_as_pairs()
    texts = sorted({t for e in pairs for s in ("support", "query") for t, _ in e[s]}, reverse=True)
    label_of = {t: y for e in pairs for s in ("support", "query") for t, y in e[s]}
    source = datasets.Dataset.from_dict({"text": texts, "label": [label_of[t] for t in texts]})
    collate = EpisodeCollator(TokenStore(tokenize_dataset(source, tokenizer), tokenizer.pad_token_id))
    manual = []
    for i, episode in enumerate(pairs):
        classes = list(dict.fromkeys(y for _, y in episode["support"]))
        rows = {s: [texts.index(t) for t, _ in episode[s]] for s in ("support", "query")}
        labels = {s: [classes.index(y) for _, y in episode[s]] for s in ("support", "query")}
        manual.append(Episode(i, [list(WORDS).index(c) for c in classes], rows["support"], labels["support"],
                              rows["query"], labels["query"], class_names=classes))  # fmt: skip
    for one, other in zip(user, manual):
        a, b = user.collate(one), collate(other)
        assert all(torch.equal(a[s][k], b[s][k]) for s in ("support", "query") for k in a[s])
    assert (
        meta_test(model, NearestCentroid(), manual, collate, progress=False).per_episode == scored.per_episode
    )
    episodes_to_dataset(manual, source).save_to_disk(tmp_path / "saved")
    reloaded = saved_episodes(tmp_path / "saved", source, tokenizer)
    assert meta_test(model, NearestCentroid(), reloaded, progress=False).per_episode == scored.per_episode


def test_meta_test_names_the_fix_when_the_collator_is_missing_or_foreign(tokenizer, model, reference):
    user, _ = reference
    with pytest.raises(ValueError, match=r"needs collate=.*user_episodes"):
        meta_test(model, NearestCentroid(), list(user), progress=False)
    other = user_episodes(episodes_as_pairs()[:1], tokenizer)
    with pytest.raises(ValueError, match="carry the collator .* without collate"):
        meta_test(model, NearestCentroid(), user, other.collate, progress=False)
    assert meta_test(model, NearestCentroid(), user, user.collate, progress=False).episodes == 3


def with_query(query: list) -> list[dict]:
    return [
        episodes_as_pairs()[0],
        {"support": [("sunny day", "weather"), ("loud song", "music")], "query": query},
    ]


MALFORMED = {  # id: (data, phrases of the message)
    "query-label-not-in-support": (with_query([("set an alarm", "timer")]),
                                   ["Episode 1: query label 'timer' has no support example", "['weather', 'music']"]),
    "table-query-label": ([*table_rows(), {"episode": "ep2", "split": "query", "text": "x y", "label": "radio"}],
                          ["Episode 'ep2': query label 'radio'"]),
    "no-query": (with_query([]), ["Episode 1 has no query examples"]),
    "blank-text": (with_query([("  ", "weather")]), ["query set of episode 1 has text '  '", "non-blank"]),
    "float-label": (with_query([("rainy", 1.5)]), ["label 1.5 (float)", "strings or integers"]),
    "missing-key": ([{"support": [{"sentence": "a", "label": 0}], "query": []}], ["keys ['sentence', 'label']",
                                                                                   "text_column="]),
    "not-episodes": ([{"text": "a", "label": 0}], ["Episode 0 has keys ['text', 'label']"]),
    "bad-split": ([{"episode": 0, "split": "train", "text": "a", "label": 0}], ["split 'train'"]),
    "row-numbers": (episodes_to_dataset([Episode(0, [0], [0], [0], [1], [0])]),
                    ["row numbers", "saved_episodes(path, source_dataset, tokenizer)"]),
    "empty": ([], ["No episodes"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_episodes_are_refused_naming_the_episode_and_the_fix(case, tokenizer):
    data, phrases = MALFORMED[case]
    with pytest.raises(ValueError) as error:
        user_episodes(data, tokenizer)
    assert all(p in str(error.value) for p in phrases), str(error.value)


def test_a_jsonl_line_that_is_not_json_is_named(tmp_path, tokenizer):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(episodes_as_pairs()[0]) + "\n{'support': []}\n")
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        user_episodes(path, tokenizer)


def test_meta_test_recipe_scores_a_jsonl_of_user_episodes(tmp_path, tiny_checkpoint, capsys, monkeypatch):  # noqa: F811
    import hf_metatransfer.data
    from hf_metatransfer.recipes.meta_test import cli

    monkeypatch.setattr(
        hf_metatransfer.data, "load_ha_intents", lambda *a, **k: pytest.fail("intents loaded")
    )
    path = write_jsonl(tmp_path / "mine.jsonl", episodes_as_pairs())
    out = tmp_path / "results"
    results = cli(["--model_name_or_path", str(tiny_checkpoint), "--user_episodes", path, "--algorithm", "protonets",
                   "--baseline_model_name_or_path", str(tiny_checkpoint), "--baselines", "nearest-centroid",
                   "--results_dir", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "3-way 2-shot, 3 test episodes" in printed and "accuracy (%) +- 95% CI |" in printed
    assert "| nearest-centroid |" in printed and (out / "meta_test.png").exists()
    saved = json.loads((out / "results.json").read_text())
    assert {k: saved[k] for k in results} == json.loads(json.dumps(results)) and saved["source"] == path
    assert saved["command"] and "versions" in saved  # the results keep their provenance
    assert saved["episodes"]["n_way"] == [2, 3] and saved["episodes"]["k_shot"] == [2]
    assert [r["method"] for r in saved["meta_test"]] == [f"protonets ({tiny_checkpoint})", "nearest-centroid"]
    # the baseline scored exactly what the one-call route scores with the checkpoint's tokenizer (max_length 32)
    tokenizer = T.AutoTokenizer.from_pretrained(tiny_checkpoint)
    baseline = T.AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint, num_labels=3)
    direct = meta_test(
        baseline, NearestCentroid(), user_episodes(path, tokenizer, max_length=32), progress=False
    )
    assert saved["meta_test"][1]["per_episode"] == direct.per_episode
    with pytest.raises(ValueError, match="--episodes .* or --user_episodes .* not both"):
        cli(["--model_name_or_path", str(tiny_checkpoint), "--user_episodes", path, "--episodes", str(out)])
