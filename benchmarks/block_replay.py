"""Training the top blocks with and without replaying the frozen blocks below, and with and without length-sorted
micro-batches: seconds an LP-FT episode, same predictions.

Command (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/block_replay.py --threads 1 --record benchmarks/results/block_replay_e5_cpu.json

Setup: the packaged multilingual-e5-small (``embedded-multilingual``: rebuilt from 4-bit weights; ``--encoder
embedded`` for all-MiniLM-L6-v2), mean-pooled, on all-way K-shot episodes of held-out home-assistant intents in
German (``fewshot_protocols``' split and protocol: 12-way, K = 5, Q = 10 by default). Per episode and block count, in the same
process and alternately: ``FineTune(lp_ft=True, body_blocks=k)`` (20 AdamW steps) with the lower blocks replayed
(``replay_lower_blocks``), the same training running every block each step (the query logits must agree: max abs
difference printed), and the replayed training on the support in one padded batch instead of length-sorted
micro-batches of <= 16 (``micro_batches``, the default; the same gradient up to float rounding, which AdamW's
sign-like first steps can amplify in parameters whose gradient is ~0, so its logit difference is printed but not
held to the replay's bound). Also the whole body (LP-FT as the benchmarks run it, embeddings included:
on e5 the 250k-token embedding matrix is 96M of its 118M parameters, and each AdamW step updates all of it;
``body_blocks`` = the depth trains every block with the embeddings frozen). Prints a table, then ONE JSON
line with the median seconds an episode of each, ``replay_speedup_top_k`` (median without / median with
replay), ``micro_batch_speedup_top_k`` (median one batch / median micro-batches, both replayed) and
``whole_body_over_top_k`` (median whole-body LP-FT / median top-k with replay) for each k. At k = the depth nothing
is replayed, so "replay" and "every block run" time the same training twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from record import write_record  # noqa: E402

from hf_metatransfer.block_replay import Replay  # noqa: E402
from hf_metatransfer.meta import FineTune, SupportTuned  # noqa: E402


def timed(method: FineTune, model: torch.nn.Module, support: dict, query: dict) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    logits = method.predict(model, support, query)
    return time.perf_counter() - start, logits


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="embedded-multilingual")
    parser.add_argument("--language", default="de")
    parser.add_argument("--blocks", nargs="+", type=int, default=[2, 4, 6])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--k-shot", type=int, default=5)
    parser.add_argument("--q-query", type=int, default=10)
    parser.add_argument(
        "--no-whole-body", action="store_true", help="Leave out whole-body LP-FT (the slowest)."
    )
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default).")
    parser.add_argument("--record", help="Write the result with its provenance to this JSON file.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from hf_metatransfer.conventions import resolve_model
    from hf_metatransfer.episodes import EpisodeCollator, TokenStore, tokenize_dataset
    from hf_metatransfer.episodes.presets import ha_intents_tasks
    from hf_metatransfer.episodes.protocols import all_way_episodes
    from hf_metatransfer.pooling import MeanPoolBertForSequenceClassification

    sys.path.insert(0, os.path.dirname(__file__))
    from fewshot_protocols import TEST_LANGS, TRAIN_LANGS

    load_start = os.getloadavg()
    resolved = resolve_model(args.encoder)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    tasks = ha_intents_tasks(languages=[*TRAIN_LANGS, *TEST_LANGS], seed=0, class_ratios=(0.7, 0.3),
                             split_names=("train", "test"), slots="fill", cap_per_intent=60,
                             language_split={"train": TRAIN_LANGS, "test": TEST_LANGS})  # fmt: skip
    episodes = all_way_episodes(tasks, languages=[args.language], k_shot=args.k_shot, q_query=args.q_query,
                                draws=args.episodes, seed=2, split="test")  # fmt: skip
    data = tokenize_dataset(episodes.dataset, tokenizer, episodes.text_column, max_length=32,
                            prefix=resolved.conventions.prefix)  # fmt: skip
    collate = EpisodeCollator(TokenStore(data, tokenizer.pad_token_id))
    n_way = len(episodes[0].classes)
    model = MeanPoolBertForSequenceClassification.from_pretrained(
        resolved.path, num_labels=n_way, use_safetensors=True
    ).eval()

    replaying = SupportTuned.training_steps
    every_block = lambda self, tuned, chunks: contextlib.nullcontext(Replay(len(chunks)))  # noqa: E731
    seconds: dict[str, list[float]] = {} if args.no_whole_body else {"whole body": []}
    max_diff: dict[str, float] = {}
    for episode in episodes:
        batch = collate(episode)
        support, query = batch["support"], batch["query"]
        if not args.no_whole_body:
            seconds["whole body"].append(timed(FineTune(lp_ft=True, lr=5e-5), model, support, query)[0])
        for k in args.blocks:
            method = FineTune(lp_ft=True, lr=5e-5, body_blocks=k)
            s_replay, replayed = timed(method, model, support, query)
            SupportTuned.training_steps = every_block
            try:
                s_every, plain = timed(method, model, support, query)
            finally:
                SupportTuned.training_steps = replaying
            s_whole, one_batch = timed(FineTune(lp_ft=True, lr=5e-5, body_blocks=k, micro_batch_size=None), model,
                                       support, query)  # fmt: skip
            seconds.setdefault(f"top {k}, replay", []).append(s_replay)
            seconds.setdefault(f"top {k}, every block run", []).append(s_every)
            seconds.setdefault(f"top {k}, one batch", []).append(s_whole)
            for name, other in ((f"top {k}", plain), (f"top {k}, micro-batches vs one batch", one_batch)):
                max_diff[name] = max(max_diff.get(name, 0.0), (replayed - other).abs().max().item())
    median = {name: statistics.median(s) for name, s in seconds.items()}
    print(
        f"| LP-FT (20 steps), {n_way}-way {args.k_shot}-shot, {args.language} | median s/episode |\n|---|---|"
    )
    for name, value in median.items():
        print(f"| {name} | {value:.2f} |")
    result = {
        "benchmark": "block_replay", "encoder": args.encoder, "language": args.language, "n_way": n_way,
        "k_shot": args.k_shot, "episodes": len(episodes), "threads": torch.get_num_threads(),
        "median_seconds": {name: round(v, 3) for name, v in median.items()},
        "seconds": {name: [round(x, 3) for x in s] for name, s in seconds.items()},
        "max_abs_logit_difference": max_diff,
        **{f"replay_speedup_top_{k}": round(median[f"top {k}, every block run"] / median[f"top {k}, replay"], 2)
           for k in args.blocks},
        **{f"micro_batch_speedup_top_{k}": round(median[f"top {k}, one batch"] / median[f"top {k}, replay"], 2)
           for k in args.blocks},
        **{f"whole_body_over_top_{k}": round(median["whole body"] / median[f"top {k}, replay"], 2)
           for k in args.blocks if not args.no_whole_body},
        "loadavg_start": [round(x, 2) for x in load_start],
    }  # fmt: skip
    if args.record:
        write_record(args.record, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
