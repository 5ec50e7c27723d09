"""Meta-learning of text models: algorithms on torch.func, fast weights through the layer map."""

from .algorithms import (
    ALGORITHMS,
    ANIL,
    FOMAML,
    MAML,
    MetaAlgorithm,
    MetaSGD,
    ProtoNets,
    Reptile,
    TaskResult,
    build_algorithm,
)
from .fast_weights import FAST_WEIGHTS, fast_weight_names

__all__ = [
    "ALGORITHMS",
    "ANIL",
    "FAST_WEIGHTS",
    "FOMAML",
    "MAML",
    "MetaAlgorithm",
    "MetaSGD",
    "ProtoNets",
    "Reptile",
    "TaskResult",
    "build_algorithm",
    "fast_weight_names",
]
