"""The fast linear probe (features once + L-BFGS) against SGD linear probing in the Trainer, on a real model.

Command (from the repository root; about 4 minutes on 2 lightly shared CPU cores; 25 minutes seen at load
average 5 on 2 cores, most of it the as-is C="auto" fits described below; ``--repeats 1`` halves it)::

    PYTHONPATH=/work/main python benchmarks/fast_linear_probe.py

Setup: all-MiniLM-L6-v2 with a fresh classification head; English Home Assistant intents
(``load_ha_intents(["en"], cap_per_intent=200)``, 5,727 rows, 42 intents) tokenised to ``max_length=32``.
Few-shot split (default ``--shots 16``): the intents with at least ``shots + min_test`` rows (32 intents), ``shots``
random rows of each for training (512) and every other row of those intents as the held-out test set (about
5.1k). ``--shots 0`` is the full-train option: a stratified 80/20 split of the intents with at least 10 rows (the
SGD side then takes ~9x longer per epoch; lower ``--epochs``).

The two ways to fit the head on the frozen backbone:

* fast: ``fast_linear_probe(model, train, solver="logistic", C="auto")`` -- one pass of feature extraction over
  the training set, ``C`` picked by 5-fold CV over 7 values (35 L-BFGS fits), one final fit; and the same with
  ``C=1.0`` (one fit).
* SGD: ``FineTuningTrainer`` with ``lp_ft=True, linear_probe="sgd", lp_num_epochs=E`` (default 10) and
  ``max_steps`` equal to the LP budget (``ceil(E x steps per epoch)``), so the whole run is the LP phase: E passes
  of the frozen backbone (forward in train mode, dropout on), AdamW on the head only, batch 16. Its
  ``lp_learning_rate`` is tuned first (``--lp-lr auto``): the best of 1e-3 .. 3e-1 by 4-fold CV of the same SGD
  replayed on the training features (untimed, test set unseen), so the baseline is not handicapped by its LR.

Wall time of each covers everything the method needs (trainer construction and training for SGD; feature
extraction, C selection and fit for fast). Test accuracy is the argmax of the model's logits on the held-out set:
the held-out set is encoded once by the frozen backbone (the input of the ``classifier`` layer; both methods leave
the backbone untouched, which is checked) and multiplied by each fitted head; the first ``--check-rows`` test rows
are also run through each whole model in eval mode to check that the argmaxes agree. The methods run
``--repeats`` times (default 2) in alternating order (fast, SGD, SGD, fast, ...) and medians are compared::

    speedup = wall time (SGD, E epochs) / wall time (fast, C="auto")      target >= 5
    acc_fast / acc_sgd: test accuracy of each                            target acc_fast >= acc_sgd

BLAS threads: the fast probe's scikit-learn fits run on numpy/scipy's OpenBLAS with its default thread count
(2 here). When other processes share the cores, OpenBLAS threads on these small matrices (~400 x 384) slow the
L-BFGS fits down 50-100x (the 36 fits of C="auto": 341 s with the default threads, 4.5 s with one thread, same
run), and the library as is then loses to SGD.
So the fast probe is timed as is (``speedup``, ``--blas-threads 0``) and also with OpenBLAS limited to one thread
around the call (``speedup_blas1``; the fix proposed for ``linear_probe.py``; ``--no-compare-blas1`` skips it).
On busy cores the as-is C="auto" run alone can take several minutes: that is the finding, not a benchmark fault.

SGD's time grows linearly with E while the fast probe's does not depend on it, so the speedup is a function of E
(and of the training-set size, through the C search): the summary prints the time per SGD epoch and how many SGD
epochs the fast probe's time buys. It also depends on the load: SGD's 320 batch-16 forwards suffer more from
shared cores than one batch-64 extraction pass (speedup_blas1 was 5.0x at load average ~3 and 14x at ~5).
Accuracy: with the default 10 epochs SGD does not converge (training loss ~0.9 at the end; constant LR, dropout,
raw features), whereas L-BFGS reaches the optimum of the regularised objective, so fast scored ~+7.7 points here. All figures are ratios measured within one process, because other jobs may
share the cores. The last line of output is one JSON object.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402
from record import write_record  # noqa: E402
from sklearn.model_selection import StratifiedKFold, train_test_split  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_metatransfer.data import load_ha_intents, minilm_path  # noqa: E402
from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer  # noqa: E402
from hf_metatransfer.finetune import linear_probe as lp_module  # noqa: E402
from hf_metatransfer.finetune.linear_probe import extract_features, fast_linear_probe  # noqa: E402

LP_LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def split_data(args: argparse.Namespace, tokenizer) -> tuple[datasets.Dataset, datasets.Dataset, int]:
    ds = load_ha_intents(languages=["en"], cap_per_intent=200, slots="fill")
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(ds["label"]):
        by_label[label].append(i)
    need = args.shots + args.min_test if args.shots else 10
    classes = sorted(c for c, rows in by_label.items() if len(rows) >= need)
    remap = {c: k for k, c in enumerate(classes)}
    if args.shots:
        rng = random.Random(args.seed)
        train_idx, test_idx = [], []
        for c in classes:
            rows = list(by_label[c])
            rng.shuffle(rows)
            train_idx += rows[: args.shots]
            test_idx += rows[args.shots :]
    else:
        idx = [i for c in classes for i in by_label[c]]
        all_labels = ds["label"]
        labels = [all_labels[i] for i in idx]
        train_idx, test_idx = train_test_split(
            idx, test_size=args.test_frac, stratify=labels, random_state=args.seed
        )
    if args.max_test and len(test_idx) > args.max_test:
        test_idx = random.Random(args.seed + 1).sample(test_idx, args.max_test)

    def prepare(indices: list[int]) -> datasets.Dataset:
        part = ds.select(sorted(indices))
        part = part.map(
            lambda row: {"labels": remap[row["label"]]}, remove_columns=["label", "intent", "lang"]
        )
        return part.map(
            lambda b: tokenizer(b["text"], truncation=True, padding="max_length", max_length=args.max_length),
            batched=True,
            remove_columns=["text"],
        )

    return prepare(train_idx), prepare(test_idx), len(classes)


def head_accuracy(layer: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    logits = features @ layer.weight.detach().float().T + layer.bias.detach().float()
    return (logits.argmax(-1) == labels).float().mean().item()


@torch.no_grad()
def model_predictions(model, dataset: datasets.Dataset, batch_size: int) -> torch.Tensor:
    model.eval()
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
    out = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        out.append(model(**{c: torch.tensor(rows[c]) for c in cols}).logits.argmax(-1))
    return torch.cat(out)


def backbone_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("classifier.")}


def same_backbone(model, reference: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, reference[n]) for n, p in model.named_parameters() if n in reference)


def run_fast(base, train, C, blas_threads: int) -> tuple[float, dict, torch.nn.Module]:
    """Time ``fast_linear_probe`` end to end; ``info["extract_s"]`` is the share of its feature extraction."""
    model = copy.deepcopy(base)
    # blas_threads=0: the library as is. 1: the proposed fix, applied from outside (only the numpy/scipy
    # OpenBLAS pools are limited; torch's feature extraction keeps its own threads).
    limits = threadpool_limits(blas_threads, user_api="blas") if blas_threads else contextlib.nullcontext()
    extract_s = []

    def timed_extract(*a, **kw):
        start = time.perf_counter()
        try:
            return extract_features(*a, **kw)
        finally:
            extract_s.append(time.perf_counter() - start)

    original = lp_module.extract_features
    lp_module.extract_features = timed_extract  # instrumentation only: the same function, timed
    try:
        start = time.perf_counter()
        with limits:
            info = fast_linear_probe(model, train, None, solver="logistic", C=C, batch_size=64)
        seconds = time.perf_counter() - start
    finally:
        lp_module.extract_features = original
    info["extract_s"] = sum(extract_s)
    return seconds, info, model


def tune_lp_lr(features: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace) -> dict[float, float]:
    """4-fold CV accuracy of each SGD probe LR, on the training features only (the test set is never seen).

    Replays the SGD probe on frozen features: a fresh head, AdamW at a constant LR, batch ``--batch-size``,
    ``--epochs`` epochs (no dropout, unlike the Trainer run). Not part of the timed SGD run.
    """
    num_labels = int(labels.max()) + 1
    folds = min(4, int(torch.bincount(labels).min()))
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=args.seed).split(features, labels))
    scores = {}
    for lr in LP_LR_GRID:
        accuracy = 0.0
        for train_idx, val_idx in splits:
            gen = torch.Generator().manual_seed(args.seed)
            head = torch.nn.Linear(features.shape[1], num_labels)
            torch.nn.init.normal_(head.weight, 0.0, 0.02, generator=gen)
            torch.nn.init.zeros_(head.bias)
            opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
            rows = torch.from_numpy(train_idx)
            for _ in range(math.ceil(args.epochs)):
                order = rows[torch.randperm(len(rows), generator=gen)]
                for i in range(0, len(order), args.batch_size):
                    b = order[i : i + args.batch_size]
                    loss = torch.nn.functional.cross_entropy(head(features[b]), labels[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                val = torch.from_numpy(val_idx)
                accuracy += (head(features[val]).argmax(-1) == labels[val]).float().mean().item() / folds
        scores[lr] = accuracy
    return scores


def run_sgd(base, train, args, out_dir: str) -> tuple[float, torch.nn.Module, int]:
    model = copy.deepcopy(base)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    max_steps = math.ceil(args.epochs * steps_per_epoch)
    start = time.perf_counter()
    config = FineTuningConfig(
        output_dir=out_dir,
        lp_ft=True,
        linear_probe="sgd",
        lp_num_epochs=args.epochs,
        lp_learning_rate=float(args.lp_lr),
        max_steps=max_steps,  # the LP budget: the run ends as the LP phase does, the backbone never trains
        per_device_train_batch_size=args.batch_size,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        eval_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    trainer = FineTuningTrainer(model=model, args=config, train_dataset=train)
    trainer.train()
    return time.perf_counter() - start, model, max_steps


def main(args: argparse.Namespace) -> dict:
    hf_logging.set_verbosity_error()
    logging.getLogger("hf_metatransfer").setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, test, num_classes = split_data(args, tokenizer)
    torch.manual_seed(args.seed)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_classes)
    reference = backbone_state(base)
    setting = f"{args.shots}-shot" if args.shots else "full train"
    print(
        f"all-MiniLM-L6-v2, {num_classes} intents, {setting}: {len(train)} train / {len(test)} test rows, "
        f"max_length {args.max_length}, torch threads {torch.get_num_threads()}"
    )

    # The held-out set through the frozen backbone, once; each head is then applied to these features.
    start = time.perf_counter()
    test_x, test_y = extract_features(base, test, None, batch_size=args.eval_batch_size)
    print(
        f"held-out features: {tuple(test_x.shape)} in {time.perf_counter() - start:.1f} s (not timed below)"
    )
    start = time.perf_counter()
    train_x, train_y = extract_features(base, train, None, batch_size=64)
    extract_once = time.perf_counter() - start
    if args.lp_lr == "auto":
        scores = tune_lp_lr(train_x, train_y, args)
        args.lp_lr = max(scores, key=scores.__getitem__)
        print(
            f"SGD probe LR by 4-fold CV on the training features (untimed): {args.lp_lr:g}; "
            f"CV accuracy {{{', '.join(f'{lr:g}: {a:.3f}' for lr, a in scores.items())}}}"
        )
    else:
        args.lp_lr = float(args.lp_lr)

    variants = [("fast", "auto", args.blas_threads), ("fast_c1", 1.0, args.blas_threads)]
    if args.compare_blas1 and args.blas_threads != 1:
        variants.append(("fast_blas1", "auto", 1))
    names = [v[0] for v in variants] + ["sgd"]
    times: dict[str, list[float]] = {k: [] for k in names}
    accs: dict[str, list[float]] = {k: [] for k in names}
    picked_c: dict[str, list[float]] = {k: [] for k, _, _ in variants}
    fit_times: dict[str, list[float]] = {k: [] for k, _, _ in variants}
    steps = 0
    models = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for r in range(args.repeats):
            order = ("fast", "sgd") if r % 2 == 0 else ("sgd", "fast")
            for name in order:
                if name == "fast":
                    for key, C, blas in variants:
                        seconds, info, model = run_fast(base, train, C, blas)
                        times[key].append(seconds)
                        fit_times[key].append(seconds - info["extract_s"])
                        accs[key].append(head_accuracy(model.classifier, test_x, test_y))
                        picked_c[key].append(info["C"])
                        models[key] = model
                        print(
                            f"repeat {r}: fast C={C!s:4s} BLAS threads {blas or 'default'}: {seconds:6.1f} s "
                            f"(extraction {info['extract_s']:.1f} s, C search + fit {seconds - info['extract_s']:.1f} s)"
                            f", C={info['C']:.3g}, train acc {info['train_accuracy']:.3f}, test acc {accs[key][-1]:.4f}"
                        )
                else:
                    seconds, model, steps = run_sgd(base, train, args, out_dir)
                    times["sgd"].append(seconds)
                    accs["sgd"].append(head_accuracy(model.classifier, test_x, test_y))
                    models["sgd"] = model
                    print(
                        f"repeat {r}: SGD {args.epochs:g} epochs ({steps} steps): {seconds:6.1f} s, "
                        f"test acc {accs['sgd'][-1]:.4f}"
                    )

    # Checks: no method touched the backbone, and the head-on-features accuracy is the model's own argmax.
    check_rows = test.select(range(min(args.check_rows, len(test))))
    for key, model in models.items():
        if not same_backbone(model, reference):
            raise RuntimeError(f"{key}: the backbone changed; the comparison would not be a linear probe.")
        preds = model_predictions(model, check_rows, args.eval_batch_size)
        logits = (
            test_x[: len(check_rows)] @ model.classifier.weight.detach().T + model.classifier.bias.detach()
        )
        agree = (preds == logits.argmax(-1)).float().mean().item()
        if agree < 0.99:
            raise RuntimeError(f"{key}: model argmax and head-on-features argmax agree on only {agree:.3f}.")
    print(
        f"checks: backbones unchanged; model argmax == head-on-features argmax on {len(check_rows)} test rows"
    )

    t = {k: statistics.median(v) for k, v in times.items()}
    acc = {k: statistics.median(v) for k, v in accs.items()}
    per_epoch = t["sgd"] / args.epochs
    fit = {k: statistics.median(v) for k, v in fit_times.items()}
    blas = f"BLAS threads {args.blas_threads or 'default'}"
    print(f"feature extraction of the {len(train)} training rows alone: {extract_once:.1f} s")
    print(
        f"fast, C=auto ({blas}): {t['fast']:7.1f} s  test acc {acc['fast']:.4f}  "
        f"(C search + fit {fit['fast']:.1f} s; C {picked_c['fast']})"
    )
    print(
        f"fast, C=1.0  ({blas}): {t['fast_c1']:7.1f} s  test acc {acc['fast_c1']:.4f}  (fit {fit['fast_c1']:.1f} s)"
    )
    if "fast_blas1" in t:
        print(
            f"fast, C=auto (BLAS 1 thread, proposed fix): {t['fast_blas1']:7.1f} s  test acc "
            f"{acc['fast_blas1']:.4f}  (C search + fit {fit['fast_blas1']:.1f} s; C {picked_c['fast_blas1']})"
        )
    print(
        f"SGD, {args.epochs:g} epochs: {t['sgd']:7.1f} s  test acc {acc['sgd']:.4f}  ({per_epoch:.1f} s per epoch)"
    )
    print(
        f"speedup SGD / fast(C=auto): {t['sgd'] / t['fast']:.2f}x (target >= 5); SGD / fast(C=1): "
        f"{t['sgd'] / t['fast_c1']:.2f}x; fast(C=auto) costs as much as {t['fast'] / per_epoch:.1f} SGD epochs"
    )
    if "fast_blas1" in t:
        print(f"speedup SGD / fast(C=auto, BLAS 1 thread): {t['sgd'] / t['fast_blas1']:.2f}x")
    verdict = "equal or better" if acc["fast"] >= acc["sgd"] else "LOWER"
    print(f"accuracy fast(C=auto) - SGD: {acc['fast'] - acc['sgd']:+.4f} ({verdict})")
    result = {
        "speedup": round(t["sgd"] / t["fast"], 3),
        "acc_fast": round(acc["fast"], 4),
        "acc_sgd": round(acc["sgd"], 4),
        "epochs": args.epochs,
        "train_examples": len(train),
        "test_examples": len(test),
        "speedup_c1": round(t["sgd"] / t["fast_c1"], 3),
        "acc_fast_c1": round(acc["fast_c1"], 4),
    }
    if "fast_blas1" in t:
        result.update(
            speedup_blas1=round(t["sgd"] / t["fast_blas1"], 3), acc_fast_blas1=round(acc["fast_blas1"], 4)
        )
    result.update(
        {f"t_{k}_s": round(v, 2) for k, v in t.items()},
        t_extract_train_s=round(extract_once, 2),
        **{f"t_{k}_fit_s": round(statistics.median(v), 2) for k, v in fit_times.items()},
        sgd_steps=steps,
        C_auto=picked_c["fast"],
        classes=num_classes,
        shots=args.shots,
        lp_lr=args.lp_lr,
        repeats=args.repeats,
        blas_threads=args.blas_threads,
    )
    print(json.dumps(result))
    if args.record:
        write_record(args.record, result)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=int, default=16, help="training rows per intent; 0: full-train split")
    parser.add_argument(
        "--min-test", type=int, default=16, help="few-shot: intents need shots + this many rows"
    )
    parser.add_argument("--test-frac", type=float, default=0.2, help="full train: held-out fraction")
    parser.add_argument("--max-test", type=int, default=0, help="cap on held-out rows (0: all)")
    parser.add_argument("--epochs", type=float, default=10, help="SGD linear-probing epochs E")
    parser.add_argument(
        "--lp-lr",
        default="auto",
        help=f"lp_learning_rate of the SGD probe (AdamW); 'auto': best of {LP_LR_GRID} by 4-fold CV on the "
        "training features (untimed)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="SGD batch size")
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=2, help="repeats; the order alternates (fast, SGD, SGD, fast, ...)"
    )
    parser.add_argument("--check-rows", type=int, default=256, help="test rows run through the whole model")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=0,
        help="numpy/scipy OpenBLAS threads during the fast probes (0: the library as is, no limit)",
    )
    parser.add_argument(
        "--compare-blas1",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time fast(C=auto) with OpenBLAS limited to 1 thread (the proposed library fix)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--record",
        metavar="PATH",
        help="also write the result with its provenance (command, commit, versions, threads, load) to PATH, "
        "e.g. benchmarks/results/fast_linear_probe_cpu.json",
    )
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
