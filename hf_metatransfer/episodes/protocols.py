"""The literature's few-shot evaluation protocols, as ordinary :class:`Episode` objects.

N-way K-shot episodes (``EpisodeSampler``) are not how published intent results are scored. Three protocols that
are, each drawn seeded (a draw is a pure function of the seed, its language pair and its number, ``random.py``):

* :func:`all_way_episodes`: every class of a split at once (BANKING77 77-way, CLINC150 150-way, K = 5 or 10), K
  support and Q query examples a class, ``draws`` episodes a language (pair).
* :func:`generalized_episodes`: generalized few-shot learning (Gidaris & Komodakis 2018, "Dynamic few-shot visual
  learning without forgetting"; Ren et al. 2019, "Incremental few-shot learning with attention attractor
  networks"): the support holds K examples of every test class *and* of the seen (meta-train) classes, labels range
  over both, and the queries come from the test classes (or from both). Predicting a seen class for a test query is
  therefore wrong, as it is when such a model is deployed.
* :func:`fixed_shot_episodes`: MTEB's classification protocol (Muennighoff et al. 2023; MassiveIntentClassification:
  8 examples a label, 10 draws): K examples of every label from a train split, and the whole evaluation split (or
  a seeded cap of it) as the queries, identical in every draw, so per-draw scores pair across methods. MTEB then
  fits a logistic regression: score these with ``LinearProbe`` for that.

:func:`dirichlet_queries` turns any of them into episodes with class-imbalanced query sets (Veilleux et al. 2021),
the protocol that keeps transductive methods (which see the whole query batch) honest.

Each returns :class:`ProtocolEpisodes`: a sequence of episodes (``meta_test`` scores it with an
``EpisodeCollator`` over ``.dataset``, or as it is after ``.tokenized(tokenizer)``; ``episodes_to_dataset`` saves
it), the dataset its rows index, and a :class:`ProtocolReport` of the classes left out, also logged in one line.

Sources: a :class:`TaskCollection` with ``split=`` (its classes and languages; :func:`ha_intents_tasks`), an
:class:`EpisodeBuilder`, or a user's own labelled examples (a ``Dataset``, a DataFrame, a list of dicts or of
``(text, label)`` pairs). Episodes are monolingual (one set of draws for each of ``languages``, default all) or
cross-lingual (``support_languages`` x ``query_languages``, support in one language and queries in another).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa

from .builder import EpisodeBuilder, read_column
from .collate import EpisodeCollator, TokenStore, tokenize_dataset
from .episode import Episode
from .presets import TaskCollection
from .random import episode_keys, subkeys, uniform, without_replacement
from .splits import SplitLeakError
from .user import UserEpisodes

logger = logging.getLogger(__name__)

_SUPPORT, _QUERY, _SEEN, _PARTITION, _CAP = range(5)  # streams of draws
QUERIES_FROM = ("test", "both")
SOURCES = ("a TaskCollection with split=..., an EpisodeBuilder, a datasets.Dataset, a pandas DataFrame, or a list "
           "of {'text': ..., 'label': ...} dicts or (text, label) pairs")  # fmt: skip


@dataclass
class ProtocolReport:
    """What a protocol left out and why (``episodes.report``); ``str()`` is the one line that is logged."""

    protocol: str
    k_shot: int
    q_query: int | None
    #: language ("de"), pair ("de->fr") or "" (no languages) -> classes an episode of it holds
    n_way: dict[str, int] = field(default_factory=dict)
    #: language or pair -> {class: why it was left out}
    left_out: dict[str, dict[str, str]] = field(default_factory=dict)

    def __str__(self) -> str:
        shots = f"K = {self.k_shot}" + ("" if self.q_query is None else f", Q = {self.q_query}")
        ways = ", ".join(f"{pair or 'all'}: {n}-way" for pair, n in self.n_way.items())
        if not any(self.left_out.values()):
            return f"{self.protocol} episodes ({shots}; {ways}): no class left out."
        count = sum(map(len, self.left_out.values()))
        listing = "; ".join(
            f"{pair or 'all'}: " + ", ".join(f"{name} ({why})" for name, why in classes.items())
            for pair, classes in self.left_out.items()
            if classes
        )
        return f"{self.protocol} episodes ({shots}; {ways}): left out {count} classes: {listing}."


@dataclass(frozen=True, repr=False)
class ProtocolEpisodes(Sequence[Episode]):
    """Episodes of one protocol, the dataset their rows index, and what was left out (``report``)."""

    episodes: list[Episode]
    dataset: datasets.Dataset
    report: ProtocolReport
    text_column: str | None = "text"
    label_column: str = "label"

    @overload
    def __getitem__(self, index: int) -> Episode: ...
    @overload
    def __getitem__(self, index: slice) -> list[Episode]: ...
    def __getitem__(self, index: int | slice) -> Episode | list[Episode]:
        return self.episodes[index]

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[Episode]:
        return iter(self.episodes)

    def __repr__(self) -> str:
        return f"ProtocolEpisodes({len(self.episodes)} {self.report.protocol} episodes over {len(self.dataset)} rows)"

    def tokenized(
        self, tokenizer: Any, *, max_length: int | None = 128, prefix: str | None = None
    ) -> UserEpisodes:
        """The episodes with ``dataset`` tokenised and a collator, so ``meta_test(model, method, it)`` needs no
        collate (``prefix`` as in :func:`tokenize_dataset`)."""
        if self.text_column is None:
            raise ValueError("These episodes index data without a text column (already token ids?): collate them "
                             "with EpisodeCollator(TokenStore(dataset, pad_token_id)) instead.")  # fmt: skip
        data = tokenize_dataset(
            self.dataset, tokenizer, self.text_column, max_length=max_length, prefix=prefix
        )
        return UserEpisodes(self.episodes, data, EpisodeCollator(TokenStore(data, tokenizer.pad_token_id)))


# -- sources ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """The builder the rows come from, the classes on offer and the languages allowed."""

    builder: EpisodeBuilder
    classes: list[int]
    languages: list[str]  # [] without a language column
    where: str  # for messages: "split 'test'" or "the data"
    split_languages: bool = False  # languages of other splits exist (refuse them as a leak)

    _rows: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def group_rows(self, lang: str, label: int) -> np.ndarray:
        """The dataset rows of ``label`` in ``lang`` (ascending; none if it has none), looked up once."""
        if (lang, label) not in self._rows:
            index = self.builder.index
            group = index.group(index.lang_names.index(lang) if lang else 0, label)
            self._rows[(lang, label)] = (np.empty(0, np.int64) if group is None
                                         else index.order[index.offsets[group] : index.offsets[group + 1]])  # fmt: skip
        return self._rows[(lang, label)]

    def name(self, label: int) -> str:
        return self.builder.label_names[label]


def _as_dataset(data: Any, text_column: str, label_column: str) -> datasets.Dataset:
    """A user's labelled examples (Dataset, DataFrame, dicts or (text, label) pairs) as a Dataset."""
    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, pd.DataFrame):
        return datasets.Dataset.from_pandas(data, preserve_index=False)
    if isinstance(data, Sequence) and not isinstance(data, str) and data:
        if all(isinstance(item, dict) for item in data):
            return datasets.Dataset.from_list(list(data))
        if all(isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2 for item in data):
            return datasets.Dataset.from_dict(
                {text_column: [t for t, _ in data], label_column: [y for _, y in data]}
            )
    raise ValueError(f"Cannot read labelled examples from {type(data).__name__}"
                     f"{' (empty)' if isinstance(data, Sequence) and not data else ''}: give {SOURCES}.")  # fmt: skip


def _source(
    data: Any,
    split: str | None,
    classes: Sequence[str | int] | None,
    text_column: str | None,
    label_column: str,
    lang_column: str | None,
) -> _Source:
    if isinstance(data, TaskCollection):
        if split is None:
            raise ValueError(f"A TaskCollection has several class splits: pass split=... (one of "
                             f"{list(data.split_names)}, e.g. split='test').")  # fmt: skip
        if classes is not None:
            raise ValueError("A TaskCollection's split gives the classes: pass split=... or an EpisodeBuilder with "
                             "classes=..., not both.")  # fmt: skip
        langs = data.languages_of(split) if data.builder.lang_column else []
        return _Source(data.builder, sorted(data.class_ids(split)), langs, f"split {split!r}",
                       data.languages is not None)  # fmt: skip
    if split is not None:
        raise ValueError("split=... names a class split of a TaskCollection: pass the collection, or classes=... to "
                         "pick classes of this data.")  # fmt: skip
    if isinstance(data, EpisodeBuilder):
        builder = data
    else:
        dataset = _as_dataset(data, text_column or "text", label_column)
        builder = EpisodeBuilder(
            dataset, label_column=label_column, text_column=text_column, lang_column=lang_column
        )
    present = sorted(set(builder.index.group_label.tolist()))
    chosen = present if classes is None else sorted(set(builder.label_ids(classes)))
    outside = [c for c in chosen if c not in present]
    if outside:
        raise ValueError(f"Classes {outside} are not label ids of the data (it has {len(builder.label_names)} "
                         "labels): pass label names or ids of the data.")  # fmt: skip
    return _Source(builder, chosen, list(builder.languages), "the data")


def _pairs(
    source: _Source,
    languages: Sequence[str] | None,
    support_languages: Sequence[str] | None,
    query_languages: Sequence[str] | None,
) -> list[tuple[str, str]]:
    """(support language, query language) pairs: monolingual (a, a), or cross-lingual (a, b), a != b."""
    asked = [*(languages or ()), *(support_languages or ()), *(query_languages or ())]
    for name, value in (("languages", languages), ("support_languages", support_languages),
                        ("query_languages", query_languages)):  # fmt: skip
        if isinstance(value, str):
            raise ValueError(f"{name}={value!r} is one string: pass a list, {name}=[{value!r}].")
    if not source.languages:
        if asked:
            raise ValueError(f"Languages {asked} asked for, but the data has no language column: build it with "
                             "lang_column=... (EpisodeBuilder, or lang_column= here) or leave languages out.")  # fmt: skip
        return [("", "")]
    unknown = [x for x in dict.fromkeys(asked) if x not in source.languages]
    if unknown:
        if source.split_languages and set(unknown) <= set(source.builder.languages):
            raise SplitLeakError(f"Languages {unknown} are not languages of {source.where} "
                                 f"({source.languages}): pick languages of that split.")  # fmt: skip
        raise ValueError(
            f"Unknown languages {unknown}: {source.where} has {source.languages}. Pass some of those."
        )
    if support_languages is None and query_languages is None:
        return [(x, x) for x in (languages or source.languages)]
    pairs = [(a, b) for a in (support_languages or languages or source.languages)
             for b in (query_languages or languages or source.languages) if a != b]  # fmt: skip
    if not pairs:
        raise ValueError("Cross-lingual episodes need a support language different from a query language: pass "
                         "support_languages=[...] and query_languages=[...] that differ.")  # fmt: skip
    return pairs


def _pair_name(pair: tuple[str, str]) -> str:
    return pair[0] if pair[0] == pair[1] else f"{pair[0]}->{pair[1]}"


def _check_counts(**counts: Any) -> None:
    """Each count an int of at least 1 (``None`` passes: not asked for)."""
    for name, value in counts.items():
        if value is None:
            continue
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise ValueError(f"{name}={value!r}: pass an int.")
        if value < 1:
            fix = {"draws": "draws is the number of episodes a language (pair); pass draws=1 or more"}.get(
                name, f"pass {name}=1 or more"
            )
            raise ValueError(f"{name}={value} is below 1: {fix}.")


def _keys(seed: int, pair: tuple[str, str], draws: np.ndarray, stream: int) -> np.ndarray:
    """Keys of draws of one language pair, independent of which other pairs were asked for."""
    digest = hashlib.sha256(_pair_name(pair).encode()).digest()
    return episode_keys(seed, draws, (int.from_bytes(digest[:7], "little") << 3) | stream)


def _pick(keys: np.ndarray, pools: list[np.ndarray], m: int) -> list[np.ndarray]:
    """``m`` distinct rows of each pool, pool ``i`` drawn with ``keys[i]``."""
    if not pools:
        return []
    offsets = without_replacement(keys, np.array([len(p) for p in pools], dtype=np.int64), m)
    return [pool[o] for pool, o in zip(pools, offsets)]


def _finish(report: ProtocolReport, episodes: list[Episode], source: _Source) -> ProtocolEpisodes:
    (logger.warning if any(report.left_out.values()) else logger.info)("%s", report)
    builder = source.builder
    return ProtocolEpisodes(episodes, builder.dataset, report, builder.text_column, builder.label_column)


def _eligible(
    source: _Source,
    pair: tuple[str, str],
    labels: Sequence[int],
    k: int,
    q: int,
    kind: str = "",
) -> tuple[list[int], dict[str, str]]:
    """The labels with K support rows (and Q query rows, disjoint when one language) in ``pair``; why not, else."""
    a, b = pair
    kept, why = [], {}
    for label in labels:
        na, nb = len(source.group_rows(a, label)), len(source.group_rows(b, label))
        if a == b and na < k + q:
            count = f"{na} examples" if na else f"no examples in {a or 'the data'}"
            why[source.name(label)] = f"{kind}{count} < K{' + Q' * bool(q)} = {k + q}"
        elif a != b and (na < k or nb < q):
            short = [f"{na} in {a} < K = {k}"] * (na < k) + [f"{nb} in {b} < Q = {q}"] * (q > 0 and nb < q)
            why[source.name(label)] = kind + ", ".join(short)
        else:
            kept.append(label)
    return kept, why


def _refuse_small(protocol: str, left_out: dict[str, dict[str, str]], on_small_class: str) -> None:
    if on_small_class not in ("skip", "error"):
        raise ValueError(f"on_small_class={on_small_class!r}: pass 'skip' (leave such classes out, listed in "
                         "episodes.report) or 'error'.")  # fmt: skip
    if on_small_class == "error" and any(left_out.values()):
        listing = "; ".join(f"{p or 'all'}: {c}" for p, c in left_out.items() if c)
        raise ValueError(f"{protocol}: classes with too few examples: {listing}. Lower k_shot or q_query, or pass "
                         "on_small_class='skip' to leave them out.")  # fmt: skip


def _too_few(protocol: str, pair: tuple[str, str], kept: list[int], where: str, fix: str) -> None:
    if len(kept) < 2:
        raise ValueError(f"No {protocol} episodes in {_pair_name(pair) or where}: {len(kept)} class"
                         f"{'es' * (len(kept) != 1)} of {where} left, and an episode needs 2 (1 class scores 100% "
                         f"whatever the model). {fix}")  # fmt: skip


def _episode(
    episode_id: int,
    source: _Source,
    pair: tuple[str, str],
    classes: list[int],
    support: list[np.ndarray],
    query: list[np.ndarray],
) -> Episode:
    """An Episode from per-class support and query rows (query rows of a class may be none)."""
    return Episode(
        episode_id=episode_id,
        classes=classes,
        support=np.concatenate(support),
        support_labels=np.repeat(np.arange(len(classes)), [len(s) for s in support]),
        query=np.concatenate(query),
        query_labels=np.repeat(np.arange(len(classes)), [len(r) for r in query]),
        support_lang=pair[0],
        query_lang=pair[1],
        class_names=tuple(source.name(c) for c in classes),
    )


def _draw(
    source: _Source,
    pair: tuple[str, str],
    draw: int,
    seed: int,
    with_queries: list[int],
    support_only: list[int],
    k: int,
    q: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Support (K) and query (Q) rows of each class of ``with_queries``, then K support rows of ``support_only``;
    one language: K + Q distinct rows a class, so support and queries never overlap."""
    n_labels = len(source.builder.label_names)
    support_keys = subkeys(_keys(seed, pair, np.array([draw]), _SUPPORT), n_labels)[0]
    query_keys = subkeys(_keys(seed, pair, np.array([draw]), _QUERY), n_labels)[0]
    a, b = pair
    if a == b:
        both = _pick(support_keys[with_queries], [source.group_rows(a, c) for c in with_queries], k + q)
        support, query = [rows[:k] for rows in both], [rows[k:] for rows in both]
    else:
        support = _pick(support_keys[with_queries], [source.group_rows(a, c) for c in with_queries], k)
        query = _pick(query_keys[with_queries], [source.group_rows(b, c) for c in with_queries], q)
    support += _pick(support_keys[support_only], [source.group_rows(a, c) for c in support_only], k)
    return support, query + [np.empty(0, np.int64)] * len(support_only)


# -- all-way ------------------------------------------------------------------------------------------------------
def all_way_episodes(
    data: Any,
    *,
    k_shot: int,
    q_query: int,
    draws: int = 10,
    seed: int = 0,
    split: str | None = None,
    classes: Sequence[str | int] | None = None,
    languages: Sequence[str] | None = None,
    support_languages: Sequence[str] | None = None,
    query_languages: Sequence[str] | None = None,
    on_small_class: str = "skip",
    text_column: str | None = "text",
    label_column: str = "label",
    lang_column: str | None = None,
) -> ProtocolEpisodes:
    """All-way episodes: every class of the split (or ``classes``) with K + Q examples in the language (pair), K
    support and Q query examples each, ``draws`` episodes a language (pair).

    Classes short of examples are left out (``report``, one log line) or, with ``on_small_class="error"``, refused.
    Episode ids number the episodes of the set; episode ``d`` of a pair is the same whatever other pairs are asked.
    """
    _check_counts(k_shot=k_shot, q_query=q_query, draws=draws)
    source = _source(data, split, classes, text_column, label_column, lang_column)
    pairs = _pairs(source, languages, support_languages, query_languages)
    report = ProtocolReport("all-way", k_shot, q_query)
    kept_of = {}
    for pair in pairs:
        kept_of[pair], report.left_out[_pair_name(pair)] = _eligible(
            source, pair, source.classes, k_shot, q_query
        )
        report.n_way[_pair_name(pair)] = len(kept_of[pair])
    _refuse_small("all-way", report.left_out, on_small_class)
    for pair in pairs:
        _too_few("all-way", pair, kept_of[pair], source.where, "Lower k_shot or q_query, or add classes.")
    episodes = []
    for p, pair in enumerate(pairs):
        for d in range(draws):
            support, query = _draw(source, pair, d, seed, kept_of[pair], [], k_shot, q_query)
            episodes.append(_episode(p * draws + d, source, pair, kept_of[pair], support, query))
    return _finish(report, episodes, source)


# -- generalized --------------------------------------------------------------------------------------------------
def generalized_episodes(
    data: Any,
    *,
    k_shot: int,
    q_query: int,
    draws: int = 10,
    seed: int = 0,
    split: str | None = None,
    seen_split: str | None = None,
    classes: Sequence[str | int] | None = None,
    seen_classes: Sequence[str | int] | None = None,
    n_seen: int | None = None,
    queries_from: str = "test",
    languages: Sequence[str] | None = None,
    support_languages: Sequence[str] | None = None,
    query_languages: Sequence[str] | None = None,
    on_small_class: str = "skip",
    text_column: str | None = "text",
    label_column: str = "label",
    lang_column: str | None = None,
) -> ProtocolEpisodes:
    """Generalized few-shot episodes: the test classes scored among the seen classes.

    ``Episode.classes`` lists every eligible test class (ascending), then the seen classes of the episode
    (ascending): all of them, or ``n_seen`` drawn a draw. Each has K support examples; each test class has Q
    queries (``queries_from="both"``: each seen class too). Labels range over the union, so a test query predicted
    as a seen class counts as wrong (Gidaris & Komodakis 2018; Ren et al. 2019). ``report.n_way`` counts the union.
    ``meta_test`` gives the accuracy over all queries; the test and seen accuracies (and their harmonic mean,
    usual with ``queries_from="both"``) are not split out here: a query is of a test class when its label is
    below the episode's number of test classes.

    Test classes: ``split`` of a TaskCollection (seen: ``seen_split``, default ``"train"``), or ``classes`` of the
    data (seen: ``seen_classes``, default every other class). Seen classes' examples come from the test languages,
    also where a language split kept those rows out of meta-training: they are test-time support, not training.
    """
    _check_counts(k_shot=k_shot, q_query=q_query, draws=draws, n_seen=n_seen)
    if queries_from not in QUERIES_FROM:
        raise ValueError(f"queries_from={queries_from!r}: pass 'test' (queries of the test classes only) or 'both' "
                         "(of the seen classes too).")  # fmt: skip
    if isinstance(data, TaskCollection):
        if seen_classes is not None:
            raise ValueError("A TaskCollection's splits give the classes: pass seen_split=... (e.g. 'train'), not "
                             "seen_classes=...; or pass an EpisodeBuilder with classes=... and seen_classes=....")  # fmt: skip
        source = _source(data, split, classes, text_column, label_column, lang_column)
        seen_name = seen_split or "train"
        seen = sorted(data.class_ids(seen_name))
        seen_where = f"split {seen_name!r}"
    else:
        if classes is None:
            raise ValueError("Generalized episodes need the test classes: pass classes=[...] (and seen_classes=[...], "
                             "by default every other class).")  # fmt: skip
        if seen_split is not None:
            raise ValueError(
                "seen_split=... names a class split of a TaskCollection: pass seen_classes=[...]."
            )
        source = _source(data, split, classes, text_column, label_column, lang_column)
        all_labels = sorted(set(source.builder.index.group_label.tolist()))
        seen = (sorted(set(source.builder.label_ids(seen_classes))) if seen_classes is not None
                else [c for c in all_labels if c not in source.classes])  # fmt: skip
        seen_where = "seen_classes"
    both = sorted(set(seen) & set(source.classes))
    if both:
        raise SplitLeakError(f"Classes {[source.name(c) for c in both]} are both test and seen classes: give each "
                             "class to one side.")  # fmt: skip
    pairs = _pairs(source, languages, support_languages, query_languages)
    seen_q = q_query if queries_from == "both" else 0
    report = ProtocolReport("generalized", k_shot, q_query)
    test_of, seen_of = {}, {}
    for pair in pairs:
        name = _pair_name(pair)
        test_of[pair], why = _eligible(source, pair, source.classes, k_shot, q_query, "test class: ")
        seen_of[pair], why_seen = _eligible(source, pair, seen, k_shot, seen_q, "seen class: ")
        report.left_out[name] = why | why_seen
        report.n_way[name] = len(test_of[pair]) + min(len(seen_of[pair]), n_seen or len(seen_of[pair]))
    _refuse_small("generalized", report.left_out, on_small_class)
    for pair in pairs:
        if not test_of[pair]:
            raise ValueError(f"No generalized episodes in {_pair_name(pair) or source.where}: no test class of "
                             f"{source.where} has K + Q = {k_shot + q_query} examples. Lower k_shot or q_query.")  # fmt: skip
        if not seen_of[pair] or len(seen_of[pair]) < (n_seen or 0):
            raise ValueError(f"Generalized episodes in {_pair_name(pair) or source.where} need "
                             f"{n_seen or 'some'} seen classes of {seen_where} with K = {k_shot} examples; "
                             f"{len(seen_of[pair])} have them. Lower n_seen or k_shot, or name other seen "
                             "classes.")  # fmt: skip
    episodes = []
    for p, pair in enumerate(pairs):
        for d in range(draws):
            chosen = seen_of[pair]
            if n_seen is not None:
                u = uniform(_keys(seed, pair, np.array([d]), _SEEN), (len(chosen),))[0]
                chosen = sorted(np.asarray(chosen)[np.argsort(u, kind="stable")[:n_seen]].tolist())
            with_q, without_q = (test_of[pair] + chosen, []) if seen_q else (test_of[pair], chosen)
            support, query = _draw(source, pair, d, seed, with_q, without_q, k_shot, q_query)
            episodes.append(_episode(p * draws + d, source, pair, test_of[pair] + chosen, support, query))
    return _finish(report, episodes, source)


# -- fixed shots per label, repeated draws (MTEB) ----------------------------------------------------------------
def _labels_by_name(dataset: datasets.Dataset, column: str) -> datasets.Dataset:
    """A ClassLabel column as its names, so a train and an evaluation split agree on labels by name."""
    feature = dataset.features.get(column)
    if not isinstance(feature, datasets.ClassLabel):
        return dataset
    ids = read_column(dataset, column, "label").combine_chunks()
    names = pa.array(feature.names).take(ids).to_pylist()
    return dataset.remove_columns(column).add_column(column, names)


def _train_and_evaluation(
    train: Any,
    evaluation: Any,
    text_column: str | None,
    label_column: str,
    lang_column: str | None,
) -> tuple[EpisodeBuilder, int]:
    """One builder over the train rows, then the evaluation rows (episodes index one dataset); the first
    evaluation row."""
    if isinstance(train, TaskCollection | EpisodeBuilder) or isinstance(
        evaluation, TaskCollection | EpisodeBuilder
    ):
        raise ValueError("With evaluation=... pass both splits as labelled examples (Dataset, DataFrame, list); a "
                         "TaskCollection or EpisodeBuilder is one dataset: pass it alone (its rows are split into "
                         "train and evaluation rows by eval_fraction).")  # fmt: skip
    columns = [c for c in (text_column, label_column, lang_column) if c]
    parts = []
    for name, data in (("train", train), ("evaluation", evaluation)):
        dataset = _as_dataset(data, text_column or "text", label_column)
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise ValueError(f"The {name} split has no column {missing} (it has {dataset.column_names}): pass "
                             "text_column=..., label_column=..., lang_column=....")  # fmt: skip
        parts.append(_labels_by_name(dataset.select_columns(columns), label_column))
    if parts[1].features != parts[0].features:
        try:
            parts[1] = parts[1].cast(parts[0].features)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"The evaluation split's columns {parts[1].features} do not match the train split's "
                             f"{parts[0].features} ({exc}): give both the same label type.") from None  # fmt: skip
    dataset = datasets.concatenate_datasets(parts)
    builder = EpisodeBuilder(
        dataset, label_column=label_column, text_column=text_column, lang_column=lang_column
    )
    return builder, len(parts[0])


def _partition(source: _Source, seed: int, eval_fraction: float) -> dict[tuple[str, int], np.ndarray]:
    """Evaluation rows of each (language, class) of one dataset: a seeded ``eval_fraction`` of its rows (the rest
    are its train rows), fixed for every draw."""
    held: dict[tuple[str, int], np.ndarray] = {}
    for lang in source.languages or [""]:
        for label in source.classes:
            rows = source.group_rows(lang, label)
            u = uniform(_keys(seed, (lang, lang), np.array([label]), _PARTITION), (len(rows),))[0]
            held[(lang, label)] = np.sort(
                rows[np.argsort(u, kind="stable")[: int(round(eval_fraction * len(rows)))]]
            )
    return held


def fixed_shot_episodes(
    train: Any,
    evaluation: Any = None,
    *,
    k_shot: int = 8,
    draws: int = 10,
    seed: int = 0,
    max_queries: int | None = None,
    eval_fraction: float = 0.5,
    split: str | None = None,
    classes: Sequence[str | int] | None = None,
    languages: Sequence[str] | None = None,
    support_languages: Sequence[str] | None = None,
    query_languages: Sequence[str] | None = None,
    text_column: str | None = "text",
    label_column: str = "label",
    lang_column: str | None = None,
) -> ProtocolEpisodes:
    """MTEB-style: ``draws`` episodes a language (pair), each K train examples of every label as the support and
    the whole evaluation split (or a seeded ``max_queries`` of it, in row order) as the queries.

    The queries, their order and labels are identical in every draw: only the support changes, so per-draw scores
    pair across methods. ``Episode.classes`` is every label (ascending) in every draw.

    ``evaluation`` given: ``train`` and ``evaluation`` are labelled examples (Dataset, DataFrame, list), joined into
    ``episodes.dataset`` (train rows first). Not given: ``train`` is one dataset (a TaskCollection with ``split``,
    an EpisodeBuilder or examples), and a seeded ``eval_fraction`` of each class (in each language) is the
    evaluation split, the rest the train split. A label with fewer than K train examples is refused: every
    label gets exactly K.
    """
    _check_counts(k_shot=k_shot, draws=draws, max_queries=max_queries)
    if evaluation is None and not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction={eval_fraction!r}: the share of each class held out as the evaluation "
                         "split is between 0 and 1 (exclusive), e.g. 0.5.")  # fmt: skip
    if evaluation is not None:
        builder, first_eval = _train_and_evaluation(train, evaluation, text_column, label_column, lang_column)
        source = _source(builder, split, classes, text_column, label_column, lang_column)
        held = None
    else:
        source = _source(train, split, classes, text_column, label_column, lang_column)
        held, first_eval = _partition(source, seed, eval_fraction), 0
    pairs = _pairs(source, languages, support_languages, query_languages)
    report = ProtocolReport("fixed-shots", k_shot, None)
    episodes = []
    for p, pair in enumerate(pairs):
        a, b = pair
        train_rows, eval_rows = {}, {}
        for label in source.classes:
            rows_a, rows_b = source.group_rows(a, label), source.group_rows(b, label)
            if held is None:
                train_rows[label], eval_rows[label] = (
                    rows_a[rows_a < first_eval],
                    rows_b[rows_b >= first_eval],
                )
            else:
                train_rows[label] = np.setdiff1d(rows_a, held[(a, label)])
                eval_rows[label] = held[(b, label)]
        labels = [c for c in source.classes if len(train_rows[c]) or len(eval_rows[c])]
        absent = [c for c in source.classes if c not in labels]
        report.left_out[_pair_name(pair)] = {
            source.name(c): f"no examples in {a or 'the data'}" for c in absent
        }
        orphans = [source.name(c) for c in labels if not len(train_rows[c])]
        if orphans:
            raise ValueError(f"Labels {orphans} have evaluation examples{f' in {b}' if b else ''} but no train "
                             f"examples{f' in {a}' if a else ''}: every label needs K = {k_shot} train examples. "
                             "Add train examples, or drop those labels (classes=...).")  # fmt: skip
        small = {source.name(c): len(train_rows[c]) for c in labels if len(train_rows[c]) < k_shot}
        if small:
            smallest = min(small.values())
            raise ValueError(f"K = {k_shot} is larger than the smallest class{f' in {a}' if a else ''}: train "
                             f"examples {small}. Lower k_shot to {smallest} or less, or leave those classes out "
                             "(classes=... of an EpisodeBuilder or of your data).")  # fmt: skip
        _too_few("fixed-shots", pair, labels, source.where, "Add labels.")
        query = np.concatenate([eval_rows[c] for c in labels])
        query_labels = np.repeat(np.arange(len(labels)), [len(eval_rows[c]) for c in labels])
        if not len(query):
            raise ValueError(f"The evaluation split of {_pair_name(pair) or source.where} is empty: give evaluation "
                             "examples (evaluation=..., or a larger eval_fraction).")  # fmt: skip
        if max_queries is not None and max_queries < len(query):
            u = uniform(_keys(seed, pair, np.array([0]), _CAP), (len(query),))[0]
            kept = np.argsort(u, kind="stable")[:max_queries]
            query, query_labels = query[kept], query_labels[kept]
        order = np.argsort(query, kind="stable")
        query, query_labels = query[order], query_labels[order]
        report.n_way[_pair_name(pair)] = len(labels)
        n_labels = len(source.builder.label_names)
        for d in range(draws):
            keys = subkeys(_keys(seed, pair, np.array([d]), _SUPPORT), n_labels)[0]
            support = _pick(keys[labels], [train_rows[c] for c in labels], k_shot)
            episodes.append(Episode(
                episode_id=p * draws + d, classes=labels, support=np.concatenate(support),
                support_labels=np.repeat(np.arange(len(labels)), k_shot), query=query.copy(),
                query_labels=query_labels.copy(), support_lang=a, query_lang=b,
                class_names=tuple(source.name(c) for c in labels),
            ))  # fmt: skip
    return _finish(report, episodes, source)


# -- imbalanced queries -------------------------------------------------------------------------------------------
def dirichlet_queries(
    episodes: ProtocolEpisodes, alpha: float = 2.0, seed: int = 0, fraction: float = 0.5
) -> ProtocolEpisodes:
    """The episodes with class-imbalanced query sets: the realistic protocol for transductive methods (Veilleux et
    al. 2021, "Realistic evaluation of transductive few-shot learning": class proportions ~ Dirichlet(alpha 1),
    alpha = 2 there). Balanced queries tell a transductive method the label marginals; deployed batches are not
    balanced. Inductive methods score the same in expectation; methods that lean on the batch's balance do not.

    Each episode keeps ``round(fraction * queries)`` queries split over its classes by proportions drawn from a
    symmetric Dirichlet (largest-remainder rounding), each class capped at the queries it has (so the most extreme
    draws are truncated; ``fraction`` 0.5 leaves room). The support is unchanged; the draw is a pure function of
    ``(seed, episode_id)``.
    """
    if not alpha > 0:
        raise ValueError(f"alpha={alpha}: the Dirichlet concentration is > 0 (Veilleux et al. use 2).")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: the share of each episode's queries to keep, in (0, 1].")
    out = []
    for episode in episodes:
        n = episode.n_way
        rng = np.random.default_rng([seed, episode.episode_id, 0xD1])
        wanted = rng.dirichlet(np.full(n, float(alpha))) * max(1, round(fraction * len(episode.query)))
        counts = np.floor(wanted).astype(np.int64)
        remainder = int(round(wanted.sum())) - int(counts.sum())
        counts[np.argsort(-(wanted - counts), kind="stable")[:remainder]] += 1
        keep = np.concatenate([np.flatnonzero(episode.query_labels == c)[: counts[c]] for c in range(n)])
        if len(keep) == 0:  # every drawn class had no queries of its own: keep the first query
            keep = np.array([0])
        keep.sort()
        out.append(replace(episode, query=episode.query[keep], query_labels=episode.query_labels[keep]))
    report = replace(episodes.report, protocol=f"{episodes.report.protocol}, Dirichlet({alpha:g}) queries")
    return replace(episodes, episodes=out, report=report)
