"""Tasks for meta-training tests: synthetic token-id episodes through the real episode pipeline, and sine waves."""

from __future__ import annotations

import datasets
import numpy as np
import torch
import transformers as T
from torch import nn

from hf_metatransfer.episodes import EpisodeBuilder, EpisodeCollator, TokenStore
from hf_metatransfer.episodes.random import episode_keys, uniform


def token_classes(n_classes=10, per_class=20, seed=0) -> datasets.Dataset:
    """Each class owns a few token ids; a row is 6 tokens, most of them from its class."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_classes):
        own = 5 + 3 * c + np.arange(3)
        for _ in range(per_class):
            ids = np.where(rng.random(6) < 0.7, rng.choice(own, 6), rng.integers(5, 60, 6))
            rows.append({"input_ids": [1, *ids.tolist()], "label": c})
    return datasets.Dataset.from_list(rows)


def token_episodes(n_way=3, k=2, q=3, seed=0):
    data = token_classes()
    builder = EpisodeBuilder(data, label_column="label", text_column=None)
    splits = builder.split_classes(explicit={"train": list(range(7)), "test": [7, 8, 9]})
    train = builder.sampler(n_way, k, q, classes=splits["train"], seed=seed)
    test = builder.sampler(n_way, k, q, classes=splits["test"], seed=seed + 1)
    return train, test, EpisodeCollator(TokenStore(data, pad_token_id=0))


def tiny_bert(n_way=3, seed=0) -> T.BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = T.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
                       num_labels=n_way, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return T.BertForSequenceClassification(cfg)


class SineTasks:
    """Finn et al. (2017): y = A sin(x - phase), A in [0.1, 5], phase in [0, pi], x in [-5, 5]; task i is seeded."""

    def __init__(self, k: int = 10, q: int = 10, seed: int = 0) -> None:
        self.k, self.q, self.seed = k, q, seed

    def batch(self, ids):
        ids = np.asarray(list(ids))
        params = uniform(episode_keys(self.seed, ids, 0), (2,))
        points = uniform(episode_keys(self.seed, ids, 1), (self.k + self.q,)) * 10 - 5
        return [(0.1 + 4.9 * a, np.pi * p, x) for (a, p), x in zip(params, points)]

    def __call__(self, task) -> dict:
        amplitude, phase, x = task
        y = amplitude * np.sin(x - phase)
        t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
        return {"support": {"x": t(x[: self.k, None]), "labels": t(y[: self.k])},
                "query": {"x": t(x[self.k :, None]), "labels": t(y[self.k :])}}  # fmt: skip


class SineNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
