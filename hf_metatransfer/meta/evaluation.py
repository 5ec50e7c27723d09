"""Meta-testing: adapt to each test episode, score its queries, mean accuracy with a 95% Student-t CI and adaptation
time.

The non-meta baselines run through the same harness on the same episodes: nearest class centroid on frozen
features, a linear probe on frozen features, fine-tuning, and LP-FT. Each is an object with
``predict(model, support, query) -> query logits`` like the meta-learning algorithms.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..episodes.episode import Episode
from ..episodes.user import UserEpisodes
from ..stats import confidence_interval
from .algorithms import Batch, ProtoNets, model_inputs


@dataclass
class MetaTestResult:
    method: str
    accuracy: float
    ci95: float
    seconds_per_episode: float
    episodes: int
    per_episode: list[float]
    #: how the method adapts (solver, steps, LRs, regularisation): a figure means little without it
    settings: str = ""
    #: the header of a table of ``row()`` lines
    TABLE_HEADER: ClassVar[str] = (
        "| method | settings | accuracy (%) +- 95% CI | adaptation s/episode | episodes |\n|---|---|---|---|---|"
    )

    def row(self) -> str:
        return (f"| {self.method} | {self.settings} | {100 * self.accuracy:.1f} +- {100 * self.ci95:.1f} | "
                f"{self.seconds_per_episode:.3f} | {self.episodes} |")  # fmt: skip


class NearestCentroid(ProtoNets):
    """Class centroids of frozen, mean-pooled, L2-normalised embeddings; the nearest by cosine wins."""

    name = "nearest-centroid"
    settings = "frozen model, nothing trained: nearest class centroid of L2-normalised mean-pooled embeddings"

    def embed(self, model: nn.Module, weights, batch: Batch) -> torch.Tensor:
        return F.normalize(super().embed(model, weights, batch), dim=-1)


class LinearProbe(NearestCentroid):
    """Logistic regression (L-BFGS, scikit-learn, via ``fit_probe``) on the frozen embeddings of the support set."""

    name = "linear-probe"

    def __init__(self, C: float = 10.0) -> None:
        super().__init__()
        self.C = C

    @property
    def settings(self) -> str:
        """Stated in results: C = 10 on standardised features is not scikit-learn's default probe."""
        return (f"frozen model: logistic regression, C={self.C:g} on standardised L2-normalised mean-pooled "
                "embeddings (scikit-learn L-BFGS, max_iter 1000)")  # fmt: skip

    def predict(self, model: nn.Module, support: Batch, query: Batch) -> torch.Tensor:
        from ..finetune.linear_probe import fit_probe

        with torch.no_grad():
            s = self.embed(model, self.weights(model), support).cpu()
            q = self.embed(model, self.weights(model), query).cpu()
        labels = support["labels"].cpu()
        weight, bias = fit_probe(s, labels, int(labels.max()) + 1, C=self.C)
        return q @ weight.T + bias


class FineTune:
    """Fine-tune a copy of the model on the support set (AdamW, ``steps`` full-batch steps), then predict.

    With ``lp_ft`` the head is first fitted by a linear probe on frozen features (LP-FT).
    """

    def __init__(self, steps: int = 20, lr: float = 5e-5, head_lr: float = 1e-2, lp_ft: bool = False,
                 probe_C: float = 1.0) -> None:  # fmt: skip
        self.steps, self.lr, self.head_lr, self.lp_ft, self.probe_C = steps, lr, head_lr, lp_ft, probe_C
        self.name = "lp-ft" if lp_ft else "fine-tuning"

    @property
    def settings(self) -> str:
        """Stated in results, so the figures compare with another paper's fine-tuning."""
        probe = (f"head first fitted by logistic regression, C={self.probe_C:g} on its standardised inputs; "
                 if self.lp_ft else "")  # fmt: skip
        return (f"{probe}{self.steps} full-batch AdamW steps (weight decay 0.01) on the support set, LR "
                f"{self.lr:g} body / {self.head_lr:g} head, dropout off")  # fmt: skip

    def predict(self, model: nn.Module, support: Batch, query: Batch) -> torch.Tensor:
        from ..finetune.linear_probe import find_probe_layer, fit_probe
        from ..layers import build_layer_map

        tuned = copy.deepcopy(model).train(False)
        layer_map = build_layer_map(tuned)
        head = set(layer_map.head.param_names)
        if self.lp_ft:
            name, layer = find_probe_layer(tuned, layer_map)
            captured = []
            handle = layer.register_forward_hook(lambda m, a, o: captured.append(a[0].detach()))
            with torch.no_grad():
                tuned(**model_inputs(support))
            handle.remove()
            weight, bias = fit_probe(captured[0], support["labels"].cpu(), layer.out_features, C=self.probe_C)
            with torch.no_grad():
                layer.weight.copy_(weight.to(layer.weight))
                if layer.bias is not None and bias is not None:
                    layer.bias.copy_(bias.to(layer.bias))
        groups = [
            {"params": [p for n, p in tuned.named_parameters() if n in head], "lr": self.head_lr},
            {"params": [p for n, p in tuned.named_parameters() if n not in head], "lr": self.lr},
        ]
        optimizer = torch.optim.AdamW(groups)
        for _ in range(self.steps):
            optimizer.zero_grad()
            F.cross_entropy(tuned(**model_inputs(support)).logits, support["labels"]).backward()
            optimizer.step()
        with torch.no_grad():
            return tuned(**model_inputs(query)).logits


def meta_test(
    model: nn.Module,
    method,
    episodes: Iterable[Episode] | UserEpisodes,
    collate: Callable[[Episode], dict] | None = None,
    *,
    name: str | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> MetaTestResult:
    """Adapt ``method`` to every episode and score its queries: mean accuracy, 95% CI, seconds an episode.

    Episodes hold row numbers, so ``collate`` must read the data they index; ``user_episodes(...)`` carry theirs.
    """
    if isinstance(episodes, UserEpisodes):
        if collate is not None and collate is not episodes.collate:
            raise ValueError("These user episodes index their own tokenised texts and carry the collator that "
                             "reads them: call meta_test(model, method, episodes) without collate.")  # fmt: skip
        collate = episodes.collate
    elif collate is None:
        raise ValueError("meta_test needs collate=... to turn episodes (row numbers) into tensors: an "
                         "EpisodeCollator over the tokenised data they index, or build the episodes with "
                         "hf_metatransfer.episodes.user_episodes(...), which carry their own.")  # fmt: skip
    model.eval()
    accuracies, seconds = [], 0.0
    episodes = list(episodes)
    for episode in tqdm(episodes, desc=f"Meta-testing {name or method.name}", disable=not progress):
        batch = collate(episode)
        support = {k: v.to(device) for k, v in batch["support"].items()}
        query = {k: v.to(device) for k, v in batch["query"].items()}
        start = time.perf_counter()
        logits = method.predict(model, support, query)
        seconds += time.perf_counter() - start
        accuracies.append((logits.argmax(-1).cpu() == query["labels"].cpu()).float().mean().item())
    mean, half = confidence_interval(accuracies)
    return MetaTestResult(
        name or method.name, mean, half, seconds / max(len(episodes), 1), len(episodes), accuracies,
        settings=getattr(method, "settings", ""),
    )  # fmt: skip
