import collections
import warnings

import datasets
import numpy as np
import pytest

from hf_metatransfer.episodes import EpisodeCollator, StreamingEpisodes, TokenStore, tasks_from_builder

NAMES = [f"intent_{c}" for c in range(8)]


def synthetic(rows=3000, seed=0, rare_rows=0):
    """Rows of 8 classes (a ClassLabel) in 3 languages, shuffled; ``rare_rows`` rows of a 9th, rare class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 8, rows).tolist() + [8] * rare_rows
    langs = rng.choice(["de", "en", "fr"], rows).tolist() + ["en"] * rare_rows
    order = rng.permutation(len(labels))
    labels, langs = [labels[i] for i in order], [langs[i] for i in order]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES + ["rare"]),
                                  "lang": datasets.Value("string"), "input_ids": datasets.Sequence(datasets.Value("int64"))})  # fmt: skip
    return datasets.Dataset.from_dict({
        "text": [f"{lang} {NAMES[y] if y < 8 else 'rare'} row {i}" for i, (y, lang) in enumerate(zip(labels, langs))],
        "label": labels,
        "lang": langs,
        "input_ids": [[101] + [1000 + i] * (1 + i % 5) + [102] for i in range(len(labels))],
    }, features=features)  # fmt: skip


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def stream(data):
    return StreamingEpisodes(data.to_iterable_dataset(), capacity=30, seed=1, batch_size=256).fill()


def test_buffers_hold_at_most_capacity_rows_of_each_class_from_the_stream(data, stream):
    assert stream.exhausted and stream.rows_seen == data.num_rows and stream.skipped == 0
    buffer = stream.buffer
    assert buffer.column_names == ["label", "text", "stream_index"]
    assert buffer.features["label"] == data.features["label"]  # the ClassLabel is kept
    counts = collections.Counter(buffer["label"])
    assert set(counts.values()) == {30} and len(counts) == 8
    source = data.select(buffer["stream_index"])
    assert source["text"] == buffer["text"] and source["label"] == buffer["label"]
    assert len(set(buffer["stream_index"])) == buffer.num_rows
    assert all(held == 30 and seen > 30 for held, seen in stream.class_counts().values())
    # classes in order, each a uniform sample: not just the first 30 rows of the stream
    assert buffer["label"] == sorted(buffer["label"])
    assert max(buffer["stream_index"]) > 1000


def test_buffers_are_seeded_and_independent_of_batching(data, stream):
    rows = stream.buffer["stream_index"]
    other_batches = StreamingEpisodes(data.to_iterable_dataset(), capacity=30, seed=1, batch_size=7).fill()
    assert other_batches.buffer["stream_index"] == rows
    piecewise = StreamingEpisodes(data.to_iterable_dataset(), capacity=30, seed=1, batch_size=100)
    piecewise.fill(max_rows=150).fill(max_rows=1)
    assert not piecewise.exhausted and piecewise.rows_seen == 151
    piecewise.fill(max_rows=1000).fill()
    assert piecewise.buffer["stream_index"] == rows and piecewise.rows_seen == data.num_rows
    as_rows = StreamingEpisodes(
        iter(list(data)), capacity=30, seed=1, columns=["input_ids"]
    ).fill()  # plain rows
    assert as_rows.buffer["stream_index"] == rows
    reseeded = StreamingEpisodes(data.to_iterable_dataset(), capacity=30, seed=2).fill()
    assert reseeded.buffer["stream_index"] != rows


def test_reservoir_keeps_each_row_with_equal_probability():
    rows = [{"text": f"row {i}", "label": "a"} for i in range(40)]
    hits = collections.Counter()
    seeds = 500
    for seed in range(seeds):
        s = StreamingEpisodes(rows, capacity=4, seed=seed, batch_size=16).fill()
        hits.update(s._slots[0][j][0] for j in range(4))
    assert sum(hits.values()) == 4 * seeds and len(hits) == 40
    expected = 4 * seeds / 40
    chi2 = sum((hits[i] - expected) ** 2 / expected for i in range(40))
    assert chi2 < 80  # 39 degrees of freedom: p < 1e-4 above ~78


def test_episodes_come_from_the_buffer_seeded_in_every_mode(data, stream):
    buffer_labels = np.asarray(stream.buffer["label"])
    sampler = stream.sampler(5, 5, 15, seed=3)
    episodes = sampler.batch(range(20))
    for e in episodes:
        assert (buffer_labels[e.support] == e.classes[e.support_labels]).all()
        assert (buffer_labels[e.query] == e.classes[e.query_labels]).all()
        assert set(e.class_names) <= set(NAMES)
        support, _ = stream.texts(e)
        assert all(t.split()[1] == e.class_names[y] for t, y in zip(support, e.support_labels))
    again = (
        StreamingEpisodes(data.to_iterable_dataset(), capacity=30, seed=1).fill().sampler(5, 5, 15, seed=3)
    )
    assert [e.to_dict() for e in again.batch(range(20))] == [e.to_dict() for e in episodes]
    langs = StreamingEpisodes(data.to_iterable_dataset(), lang_column="lang", capacity=12, seed=0).fill()
    assert collections.Counter(zip(langs.buffer["lang"], langs.buffer["label"])).most_common(1)[0][1] == 12
    mono = langs.sampler(3, 2, 3, mode="monolingual", seed=0)
    lang_of = np.asarray(langs.buffer["lang"])
    for e in mono.batch(range(20)):
        assert set(lang_of[np.r_[e.support, e.query]].tolist()) == {e.support_lang}


def test_warns_for_classes_whose_buffer_is_smaller_than_k_plus_q():
    data = synthetic(rows=600, rare_rows=3)
    stream = StreamingEpisodes(data.to_iterable_dataset(), capacity=20, seed=0).fill()
    with pytest.warns(UserWarning, match=r"1 class whose buffer holds fewer than K \+ Q = 10 rows") as caught:
        sampler = stream.sampler(4, 5, 5)
    assert stream.small_classes == {"rare": 3} and len(str(caught[0].message).splitlines()) == 1
    assert caught[0].filename == __file__  # the warning points at the line that asked for episodes
    assert len(caught) == 1  # the stream's warning (with buffer sizes), not the sampler's too
    assert all(8 not in e.classes for e in sampler.batch(range(30)))
    with pytest.warns(UserWarning, match=r"capacity 20 < K \+ Q: raise capacity"):
        with pytest.raises(ValueError, match="N = 4 is larger than the classes on offer"):
            stream.sampler(4, 10, 15)
    partial = StreamingEpisodes(data.to_iterable_dataset(), capacity=20, seed=0).fill(max_rows=50)
    with pytest.warns(UserWarning, match=r"not read to its end: fill\(\) more"):
        with pytest.raises(ValueError):
            partial.sampler(4, 5, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stream.sampler(4, 1, 2)  # every class is large enough: no warning


def test_tokenised_stream_pads_from_the_buffer(data):
    stream = StreamingEpisodes(data.to_iterable_dataset(), capacity=10, seed=0, columns=["input_ids"]).fill()
    collate = EpisodeCollator(TokenStore(stream.buffer, pad_token_id=0))
    e = stream.sampler(3, 2, 2, seed=0)[0]
    batch = collate(e)
    ids = stream.buffer.select(e.support.tolist())["input_ids"]
    assert batch["support"]["input_ids"][0, : len(ids[0])].tolist() == ids[0]
    assert batch["support"]["attention_mask"].sum(1).tolist() == [len(x) for x in ids]
    tasks = tasks_from_builder(stream.builder, class_ratios=(0.5, 0.5), split_names=("train", "test"))
    test_sampler = tasks.sampler("test", 2, 2, 2)
    assert set(test_sampler[0].classes.tolist()) <= set(tasks.classes["test"])


def test_bad_streams_are_refused_with_the_reason(data):
    with pytest.raises(ValueError, match=r"'lable' \(did you mean 'label'\?\) are not in the stream"):
        StreamingEpisodes(data.to_iterable_dataset(), label_column="lable")
    with pytest.raises(TypeError, match="use EpisodeBuilder"):
        StreamingEpisodes(data)
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        StreamingEpisodes(data.to_iterable_dataset(), capacity=0)
    with pytest.raises(RuntimeError, match=r"call fill\(\) first"):
        _ = StreamingEpisodes(data.to_iterable_dataset()).buffer
    rows = [
        {"text": "ok", "label": "a"},
        {"text": "  ", "label": "a"},
        {"text": "x", "label": None},
        {"label": "b"},
    ]
    with pytest.warns(UserWarning, match="Skipped 3 stream rows"):
        stream = StreamingEpisodes(rows, capacity=2).fill()
    assert stream.buffer["text"] == ["ok"] and stream.skipped == 3
    with pytest.raises(ValueError, match=r"'lang' are not in the stream"):
        StreamingEpisodes([{"text": "a", "label": 1}], lang_column="lang").fill()
