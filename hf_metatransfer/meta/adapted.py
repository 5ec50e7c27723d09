"""A model adapted to one task as a standalone HF model, to ``save_pretrained`` or ``push_adapted`` like any other.

MAML, FOMAML, ANIL, Meta-SGD and Reptile: the inner loop's weights on the support set, written into a copy.
ProtoNets: ``-||e(q) - c_k||^2`` is linear in the query's pooled embedding ``x`` up to ``-||e(q)||^2``, which every
class shares, so the prototypes become the weights of a head that reads the mean-pooled embedding
(``MeanPoolBertForSequenceClassification``): the saved model predicts what ProtoNets predicts, with the same softmax.
No stock class mean-pools, so that model is saved with its modeling file as Hub custom code (``trust_remote_code``).
The copy records the model's input conventions in its config, so a saved adapted model says how to write its inputs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..conventions import conventions_for
from .algorithms import Batch, MetaAlgorithm, ProtoNets
from .fast_weights import fast_weight_names


@torch.no_grad()
def adapted_model(model: nn.Module, algorithm: MetaAlgorithm, support: Batch) -> nn.Module:
    """A copy of ``model`` adapted to the task whose support batch is ``support``, in eval mode (``model`` is left
    as it was). A PEFT model stays a PEFT model: ``save_pretrained`` then writes the adapted adapter."""
    was_training = model.training
    model.eval()
    try:
        adapted = _adapted(model, algorithm, support)
    finally:
        model.train(was_training)
    conventions = conventions_for(model)
    if conventions.source:  # only what is known: the support batch was tokenised before this call
        conventions.attach_to(adapted)
    return adapted


def _adapted(model: nn.Module, algorithm: MetaAlgorithm, support: Batch) -> nn.Module:
    if isinstance(algorithm, ProtoNets):
        if (
            type(algorithm).query_logits is not ProtoNets.query_logits
            or type(algorithm).embed is not ProtoNets.embed
        ):
            raise ValueError(
                f"adapted_model saves prototypes as a linear head on the pooled embedding; {algorithm.name} "
                "normalises the embeddings (or reads the query batch) first, which no linear head reproduces. "
                "Score it with meta_test, or save a ProtoNets-adapted model (algorithm=ProtoNets())."
            )
        return _prototype_head(model, algorithm, support)
    with torch.enable_grad():
        weights = algorithm.adapt(model, support, create_graph=False)
    adapted = copy.deepcopy(model).eval()
    fast = set(algorithm.fast)
    for name, param in adapted.named_parameters():
        if name in fast:
            param.copy_(weights[name])
    return adapted


def _prototype_head(model: nn.Module, algorithm: ProtoNets, support: Batch) -> nn.Module:
    head = fast_weight_names(model, "head")
    weights = algorithm.weights(model)
    means = algorithm.prototypes(
        algorithm.pooled(model, weights, support), support["labels"]
    )  # n_way x hidden
    if algorithm.projection is not None:
        projected = means @ algorithm.projection.weight.T  # the projection's bias cancels in every distance
        weight, bias = 2 * projected @ algorithm.projection.weight, -projected.pow(2).sum(-1)
    else:
        weight, bias = 2 * means, -means.pow(2).sum(-1)
    shapes = {n: tuple(weights[n].shape) for n in head}
    if sorted(shapes.values(), key=len) != [(len(means),), tuple(weight.shape)]:
        raise ValueError(
            f"ProtoNets writes its {len(means)} prototypes into a linear head on the {weight.shape[1]}-d pooled "
            f"embedding, but the model's head is {shapes}: load the model with num_labels={len(means)} and a head "
            "on the mean-pooled states (hf_metatransfer.pooling.MeanPoolBertForSequenceClassification)."
        )
    adapted = copy.deepcopy(model).eval()
    params = dict(adapted.named_parameters())
    for name in head:
        params[name].copy_(bias if params[name].dim() == 1 else weight)
    expected = torch.log_softmax(algorithm.query_logits(model, weights, support, support), -1)
    got = torch.log_softmax(adapted(**{k: v for k, v in support.items() if k != "labels"}).logits, -1)
    if not torch.allclose(got, expected, atol=1e-3, rtol=1e-3):
        raise ValueError(
            f"{type(model).__name__}'s head does not read the mean-pooled last hidden states ProtoNets embeds with "
            "(a stock *ForSequenceClassification reads a pooler or the first token): load the encoder as "
            "hf_metatransfer.pooling.MeanPoolBertForSequenceClassification to save a ProtoNets-adapted model."
        )
    return adapted
