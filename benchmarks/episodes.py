"""Episode builder throughput: index build, seeded episode sampling and padded token tensors, on one core.

Command (from the repository root; about 1-2 minutes once the dataset is cached, plus ~2 minutes the very first
time to expand the Home Assistant templates)::

    python benchmarks/episodes.py

(``python benchmarks/episodes.py --help`` for the options; ``--modes classes`` and ``--no-tokens`` make it shorter.)

Data: ``load_ha_intents(languages=None, cap_per_intent=200)``: all 65 languages, ~234k rows, 42 intents; indexed
with ``EpisodeBuilder(ds, label_column="label", lang_column="lang")``.

One core: ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` are set to 1 before numpy and torch
are imported, ``torch.set_num_threads(1)``, ``threadpoolctl.threadpool_limits(1)`` around the run, tokenizers'
parallelism off, and the process is pinned to one CPU with ``os.sched_setaffinity`` (``--no-pin`` to skip).

What is timed (wall-clock medians over ``--repeats`` runs, default 5, each on fresh episode ids; the JSON also
has rates per CPU-second -- ``*_per_cpu_s``, ``builder_cpu_s`` -- because other processes sharing the pinned
core slow the wall clock but not the CPU time of this single-threaded process):

* ``episodes_per_s``: ``sampler.batch(ids)`` for 10,000 5-way 5-shot 15-query episodes (row indices, ``Episode``
  objects), mode ``classes`` (the headline), and the same for modes ``monolingual`` and ``cross-lingual``
  (``by_mode``); also in chunks of 256 ids (``EpisodeDataset``'s default ``chunk``).
* ``speedup_vs_naive``: against a straightforward per-class Python sampler on the same data in the same run:
  a ``dict`` label (or (language, label)) -> list of rows, then per episode ``random.sample`` of the classes and
  ``random.sample(rows, K + Q)`` per class (Python lists out; no ``Episode`` objects, so the baseline is if
  anything flattered). Mode ``classes`` is the headline ratio; ``by_mode`` has each mode's.
* ``index_1m_rows_s``: ``EpisodeBuilder`` over a 1,000,000-row ``Dataset`` of synthetic ``label`` (``ClassLabel``,
  60 classes) and ``lang`` (string, 65 codes) columns: column reads, label/language encoding and the index.
* ``tokenized_episodes_per_s``: sample + pad: ``sampler.batch`` then ``EpisodeCollator(TokenStore(...))`` on each
  episode (support and query ``input_ids`` / ``attention_mask`` / ``labels`` tensors), over the data tokenised once
  with the all-MiniLM-L6-v2 tokenizer at ``max_length=32``. The first episode's tensors are checked against the
  tokenizer's own padding.
* ``index_bytes_per_row``: ``GroupIndex.nbytes / rows`` on the intents data (its arrays are integer arrays:
  checked; the text stays in the memory-mapped Arrow table). A ``classes``-mode sampler over a multilingual index
  re-indexes by label alone (``sampler_index_bytes_per_row``).

Targets: episodes_per_s >= 20,000; index_1m_rows_s <= 1; tokenized_episodes_per_s >= 2,000. The summary names each
target met or missed; the last line of output is one JSON object.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from record import write_record  # noqa: E402

from hf_metatransfer.data import load_ha_intents, minilm_path  # noqa: E402
from hf_metatransfer.episodes import EpisodeBuilder, EpisodeCollator, TokenStore, tokenize_dataset  # noqa: E402
from hf_metatransfer.episodes.index import GroupIndex  # noqa: E402

TARGETS = {"episodes_per_s": 20_000, "index_1m_rows_s": 1.0, "tokenized_episodes_per_s": 2_000}


CPU_TIMES: dict[str, float] = {}


def median_time(fn, repeats: int, name: str | None = None) -> tuple[float, list[float]]:
    """Median wall time of ``fn(r)`` for r in range(repeats); the median CPU time goes to ``CPU_TIMES[name]``."""
    times, cpu = [], []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(r)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if name:
        CPU_TIMES[name] = statistics.median(cpu)
    return statistics.median(times), times


@contextlib.contextmanager
def quiet_sampler_warnings():
    """Small-class / small-language notices (one log line per language pair in cross-lingual mode): counted."""
    log = logging.getLogger("hf_metatransfer.episodes.sampler")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        log.setLevel(level)


# -- the straightforward baseline ----------------------------------------------------------------------------
class NaiveSampler:
    """dict of row lists per class (per language and class), ``random.sample`` per episode; seeded."""

    def __init__(self, labels: np.ndarray, langs: np.ndarray, mode: str, n: int, k: int, q: int, seed: int):
        self.mode, self.n, self.k, self.q = mode, n, k, q
        self.rng = random.Random(seed)
        by_class: dict = defaultdict(list)
        if mode == "classes":
            for row, label in enumerate(labels.tolist()):
                by_class[label].append(row)
        else:
            for row, (lang, label) in enumerate(zip(langs.tolist(), labels.tolist())):
                by_class[(lang, label)].append(row)
        self.by_class = by_class
        if mode == "classes":
            self.tasks = [(None, None, sorted(c for c, r in by_class.items() if len(r) >= k + q))]
        else:
            all_langs = sorted({lang for lang, _ in by_class})
            classes_of = defaultdict(list)
            for lang, label in by_class:
                classes_of[lang].append(label)
            pairs = [(a, a) for a in all_langs] if mode == "monolingual" else [
                (a, b) for a in all_langs for b in all_langs if a != b]  # fmt: skip
            self.tasks = []
            for a, b in pairs:
                if a == b:
                    ok = [c for c in classes_of[a] if len(by_class[(a, c)]) >= k + q]
                else:
                    ok = [
                        c
                        for c in classes_of[a]
                        if len(by_class[(a, c)]) >= k and len(by_class.get((b, c), ())) >= q
                    ]
                if len(ok) >= n:
                    self.tasks.append((a, b, sorted(ok)))

    def episode(self):
        rng, n, k, q = self.rng, self.n, self.k, self.q
        a, b, eligible = self.tasks[0] if len(self.tasks) == 1 else rng.choice(self.tasks)
        classes = rng.sample(eligible, n)
        support, query = [], []
        for c in classes:
            if a is None:
                rows = rng.sample(self.by_class[c], k + q)
                support += rows[:k]
                query += rows[k:]
            elif a == b:
                rows = rng.sample(self.by_class[(a, c)], k + q)
                support += rows[:k]
                query += rows[k:]
            else:
                support += rng.sample(self.by_class[(a, c)], k)
                query += rng.sample(self.by_class[(b, c)], q)
        labels_s = [y for y in range(n) for _ in range(k)]
        labels_q = [y for y in range(n) for _ in range(q)]
        return classes, support, labels_s, query, labels_q


# -- parts of the benchmark ----------------------------------------------------------------------------------
def check_episodes(episodes, labels: np.ndarray, n: int, k: int, q: int) -> None:
    for e in episodes:
        assert len(e.support) == n * k and len(e.query) == n * q, "episode of the wrong size"
        assert (labels[e.support] == e.classes[e.support_labels]).all(), "support row of the wrong class"
        assert (labels[e.query] == e.classes[e.query_labels]).all(), "query row of the wrong class"
        assert not set(e.support.tolist()) & set(e.query.tolist()), "support and query overlap"


def bench_sampling(builder, labels, langs, args) -> dict:
    n, k, q, e_count = args.n_way, args.k_shot, args.q_query, args.episodes
    out = {}
    for mode in args.modes:
        with quiet_sampler_warnings() as caught:
            t0 = time.perf_counter()
            sampler = builder.sampler(n, k, q, seed=args.seed, mode=mode)
            setup_s = time.perf_counter() - t0
        check_episodes(sampler.batch(range(200)), labels, n, k, q)

        def full(r, sampler=sampler):
            sampler.batch(range((r + 1) * e_count, (r + 2) * e_count))

        def chunked(r, sampler=sampler):
            start = (r + 1) * e_count
            for i in range(start, start + e_count, 256):
                sampler.batch(range(i, min(i + 256, start + e_count)))

        t_full, _ = median_time(full, args.repeats, f"{mode}")
        t_chunk, _ = median_time(chunked, args.repeats)

        t0 = time.perf_counter()
        naive = NaiveSampler(labels, langs, mode, n, k, q, args.seed)
        naive_setup_s = time.perf_counter() - t0

        def run_naive(r, naive=naive):
            for _ in range(e_count):
                naive.episode()

        t_naive, _ = median_time(run_naive, args.repeats, f"naive-{mode}")
        out[mode] = {
            "episodes_per_s": e_count / t_full,
            "episodes_per_cpu_s": e_count / CPU_TIMES[mode],
            "episodes_per_s_chunk256": e_count / t_chunk,
            "naive_episodes_per_s": e_count / t_naive,
            "speedup_vs_naive": t_naive / t_full,
            "speedup_vs_naive_cpu": CPU_TIMES[f"naive-{mode}"] / CPU_TIMES[mode],
            "speedup_vs_naive_chunk256": t_naive / t_chunk,
            "sampler_setup_s": setup_s,
            "naive_setup_s": naive_setup_s,
            "language_pairs": 0 if mode == "classes" else len(sampler.pairs),
            "setup_warnings": len(caught),
        }
        if mode == "classes":
            out[mode]["sampler_index_bytes"] = sampler.index.nbytes
    return out


def bench_index_1m(args) -> dict:
    rows = args.index_rows
    rng = np.random.default_rng(args.seed)
    lang_codes = np.array([f"l{i:02d}" for i in range(65)])
    features = datasets.Features(
        {"label": datasets.ClassLabel(num_classes=60), "lang": datasets.Value("string")}
    )
    data = datasets.Dataset.from_dict(
        {"label": rng.integers(0, 60, rows), "lang": lang_codes[rng.integers(0, 65, rows)]}, features=features
    )
    built = {}

    def build(r):
        built["b"] = EpisodeBuilder(data, label_column="label", text_column=None, lang_column="lang")

    t_builder, times = median_time(build, args.repeats, "index_1m")
    labels = np.asarray(data.with_format("numpy")["label"])
    langs = rng.integers(0, 65, rows)
    t_group, _ = median_time(lambda r: GroupIndex.build(labels, tuple(map(str, range(60))), langs,
                                                       tuple(lang_codes)), args.repeats)  # fmt: skip

    def naive_index(r):
        by_class = defaultdict(list)
        for row, key in enumerate(zip(langs.tolist(), labels.tolist())):
            by_class[key].append(row)

    t_naive, _ = median_time(naive_index, max(1, min(args.repeats, 3)))
    index = built["b"].index
    return {
        "rows": rows,
        "builder_s": t_builder,
        "builder_s_all": times,
        "builder_cpu_s": CPU_TIMES["index_1m"],
        "group_index_build_s": t_group,
        "naive_dict_index_s": t_naive,
        "bytes_per_row": index.nbytes / rows,
        "groups": index.num_groups,
    }


def bench_tokens(ds, builder, args) -> dict:
    from transformers import AutoTokenizer

    n, k, q, e_count = args.n_way, args.k_shot, args.q_query, args.episodes
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    t0 = time.perf_counter()
    tokenized = tokenize_dataset(ds, tokenizer, max_length=args.max_length)
    tokenize_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = TokenStore(tokenized, tokenizer.pad_token_id)
    store_s = time.perf_counter() - t0
    collate = EpisodeCollator(store)
    with quiet_sampler_warnings():
        sampler = builder.sampler(n, k, q, seed=args.seed, mode=args.token_mode)

    first = collate(sampler[0])
    support_text, query_text = builder.texts(first["episode"])
    ref = tokenizer(
        query_text, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt"
    )
    match = bool(torch.equal(first["query"]["input_ids"], ref["input_ids"])) and bool(
        torch.equal(first["query"]["attention_mask"], ref["attention_mask"])
    )
    widths = []

    def sample_and_pad(r):
        for episode in sampler.batch(range((r + 1) * e_count, (r + 2) * e_count)):
            batch = collate(episode)
        widths.append(batch["query"]["input_ids"].shape[1])

    episodes = {}

    def pad_only(r):
        for episode in episodes["e"]:
            collate(episode)

    t_both, _ = median_time(sample_and_pad, args.repeats, "tokens")
    episodes["e"] = sampler.batch(range(e_count))
    t_pad, _ = median_time(pad_only, args.repeats)
    return {
        "tokenized_episodes_per_s": e_count / t_both,
        "tokenized_episodes_per_cpu_s": e_count / CPU_TIMES["tokens"],
        "pad_only_episodes_per_s": e_count / t_pad,
        "tokenize_s": tokenize_s,
        "token_store_s": store_s,
        "token_store_bytes": int(store.values.nbytes + store.starts.nbytes + store.lengths.nbytes),
        "tokens_match_tokenizer": match,
        "mode": args.token_mode,
    }


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    datasets.disable_caching()  # tokenisation is timed for real and leaves no cache files beside the dataset
    datasets.disable_progress_bars()
    torch.set_num_threads(1)
    pinned = None
    if args.pin and hasattr(os, "sched_setaffinity"):
        pinned = min(os.sched_getaffinity(0)) if args.cpu is None else args.cpu
        os.sched_setaffinity(0, {pinned})
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        limits = contextlib.nullcontext()

    with limits:
        t0 = time.perf_counter()
        ds = load_ha_intents(languages=args.languages, cap_per_intent=args.cap, slots="fill")
        load_s = time.perf_counter() - t0
        holder = {}
        t_build, _ = median_time(
            lambda r: holder.update(b=EpisodeBuilder(ds, label_column="label", lang_column="lang")),
            args.repeats,
        )
        builder = holder["b"]
        index = builder.index
        assert all(np.issubdtype(a.dtype, np.integer) for a in (index.order, index.offsets, index.group_label,
                                                                 index.group_lang)), "index holds non-integers"  # fmt: skip
        labels = np.asarray(ds.with_format("numpy")["label"], dtype=np.int64)
        sampling = bench_sampling(builder, labels, np.asarray(ds["lang"]), args)
        index_1m = bench_index_1m(args)
        tokens = bench_tokens(ds, builder, args) if args.tokens else None

    head = sampling[args.modes[0]]
    result = {
        "episodes_per_s": round(head["episodes_per_s"]),
        "index_1m_rows_s": round(index_1m["builder_s"], 4),
        "tokenized_episodes_per_s": round(tokens["tokenized_episodes_per_s"]) if tokens else None,
        "speedup_vs_naive": round(head["speedup_vs_naive"], 2),
        "index_bytes_per_row": round(index.nbytes / ds.num_rows, 3),
        "headline_mode": args.modes[0],
        "by_mode": {
            m: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}
            for m, d in sampling.items()
        },  # fmt: skip
        "index_1m": {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in index_1m.items()
            if k != "builder_s_all"
        },  # fmt: skip
        "tokens": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in tokens.items()}
        if tokens
        else None,
        "rows": ds.num_rows,
        "languages": len(builder.languages),
        "classes": len(builder.label_names),
        "index_build_s": round(t_build, 4),
        "load_s": round(load_s, 2),
        "index_1m_bytes_per_row": round(index_1m["bytes_per_row"], 3),
        "sampler_index_bytes_per_row": round(sampling["classes"]["sampler_index_bytes"] / ds.num_rows, 3)
        if "classes" in sampling
        else None,
        "shape": [args.n_way, args.k_shot, args.q_query],
        "episodes": args.episodes,
        "repeats": args.repeats,
        "threads": 1,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "pinned_cpu": pinned,
    }
    met = {
        "episodes_per_s": result["episodes_per_s"] >= TARGETS["episodes_per_s"],
        "index_1m_rows_s": result["index_1m_rows_s"] <= TARGETS["index_1m_rows_s"],
        "tokenized_episodes_per_s": tokens is not None
        and result["tokenized_episodes_per_s"] >= TARGETS["tokenized_episodes_per_s"],
    }
    result["targets_met"] = met

    def verdict(key: str) -> str:
        return "met" if met[key] else "MISSED"

    n, k, q = args.n_way, args.k_shot, args.q_query
    print(f"Data: {ds.num_rows:,} rows, {result['languages']} languages, {result['classes']} intents "
          f"(loaded in {load_s:.1f} s); one thread, pinned to CPU {pinned}; medians of {args.repeats} repeats.")  # fmt: skip
    print(f"Index of the intents data: {t_build * 1e3:.1f} ms, {result['index_bytes_per_row']} bytes/row "
          f"(integers only, no text); classes-mode sampler re-index: {result['sampler_index_bytes_per_row']} B/row.")  # fmt: skip
    print(
        f"\nSampling {args.episodes:,} {n}-way {k}-shot {q}-query episodes (target >= {TARGETS['episodes_per_s']:,}/s):"
    )
    for mode, d in sampling.items():
        pairs = f", {d['language_pairs']} language (pairs)" if d["language_pairs"] else ""
        print(f"  {mode:14s} {d['episodes_per_s']:>10,.0f}/s one batch, {d['episodes_per_s_chunk256']:>10,.0f}/s in "
              f"chunks of 256; naive {d['naive_episodes_per_s']:>9,.0f}/s -> x{d['speedup_vs_naive']:.1f} "
              f"(x{d['speedup_vs_naive_chunk256']:.1f} chunked){pairs}; per CPU-second "
              f"{d['episodes_per_cpu_s']:,.0f}/s, x{d['speedup_vs_naive_cpu']:.1f}")  # fmt: skip
    print(f"  headline ({args.modes[0]}): {result['episodes_per_s']:,}/s, {verdict('episodes_per_s')}")
    print(f"\nIndex of {index_1m['rows']:,} synthetic rows (label + lang, target <= 1 s): EpisodeBuilder "
          f"{index_1m['builder_s']:.3f} s ({verdict('index_1m_rows_s')}; CPU {index_1m['builder_cpu_s']:.3f} s), "
          f"GroupIndex.build alone "
          f"{index_1m['group_index_build_s']:.3f} s, dict-of-lists {index_1m['naive_dict_index_s']:.3f} s; "
          f"{index_1m['bytes_per_row']:.2f} B/row, {index_1m['groups']} groups")  # fmt: skip
    if tokens:
        print(f"\nPadded tokens (MiniLM tokenizer, max_length {args.max_length}; tokenised once in "
              f"{tokens['tokenize_s']:.1f} s, store {tokens['token_store_bytes'] / 2**20:.1f} MiB): sample + pad "
              f"{tokens['tokenized_episodes_per_s']:,.0f} episodes/s ({verdict('tokenized_episodes_per_s')}; per "
              f"CPU-second {tokens['tokenized_episodes_per_cpu_s']:,.0f}), pad only "
              f"{tokens['pad_only_episodes_per_s']:,.0f}/s; matches the tokenizer's padding: "
              f"{tokens['tokens_match_tokenizer']}")  # fmt: skip
    print(f"\nWall-clock medians; 1-min load average at the end {result['load_average_1min']} on "
          f"{os.cpu_count()} CPUs: other processes on the pinned CPU slow wall time, not CPU time.")  # fmt: skip
    print(json.dumps(result))
    if args.record:
        write_record(args.record, result)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--languages", nargs="*", default=None, help="language codes (default: all 65)")
    parser.add_argument("--cap", type=int, default=200, help="cap_per_intent of load_ha_intents")
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--k-shot", type=int, default=5)
    parser.add_argument("--q-query", type=int, default=15)
    parser.add_argument("--modes", nargs="+", default=["classes", "monolingual", "cross-lingual"],
                        choices=["classes", "monolingual", "cross-lingual"],
                        help="sampler modes; the first is the headline")  # fmt: skip
    parser.add_argument("--index-rows", type=int, default=1_000_000)
    parser.add_argument("--tokens", action=argparse.BooleanOptionalAction, default=True,
                        help="tokenise the data and time padded episodes")  # fmt: skip
    parser.add_argument(
        "--token-mode", default="classes", choices=["classes", "monolingual", "cross-lingual"]
    )
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="pin the process to one CPU (os.sched_setaffinity)")  # fmt: skip
    parser.add_argument(
        "--cpu", type=int, default=None, help="which CPU to pin to (default: the lowest allowed)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--record",
        metavar="PATH",
        help="also write the result with its provenance (command, commit, versions, threads, load) to PATH, "
        "e.g. benchmarks/results/episodes_cpu.json",
    )
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
