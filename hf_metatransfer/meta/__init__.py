"""Meta-learning of text models: algorithms on torch.func, fast weights through the layer map."""

from .adapted import adapted_model
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
from .config import MetaTrainingConfig
from .evaluation import (
    CV_LRS,
    FineTune,
    LinearProbe,
    MetaTestResult,
    NearestCentroid,
    ProtoHeadFineTune,
    SupportTuned,
    confidence_interval,
    meta_test,
    stratified_folds,
)
from .fast_weights import FAST_WEIGHTS, fast_weight_names
from .prototypes import add_class, remove_class
from .trainer import MetaTrainer, MetaTrainerState, load_algorithm_state
from .transductive import TransductivePrototypes, refine_prototypes, select_transduction

__all__ = [
    "ALGORITHMS",
    "ANIL",
    "CV_LRS",
    "FAST_WEIGHTS",
    "FOMAML",
    "MAML",
    "FineTune",
    "LinearProbe",
    "MetaAlgorithm",
    "MetaTestResult",
    "MetaTrainer",
    "MetaTrainerState",
    "MetaTrainingConfig",
    "NearestCentroid",
    "ProtoHeadFineTune",
    "MetaSGD",
    "ProtoNets",
    "Reptile",
    "SupportTuned",
    "TaskResult",
    "TransductivePrototypes",
    "adapted_model",
    "add_class",
    "build_algorithm",
    "confidence_interval",
    "fast_weight_names",
    "load_algorithm_state",
    "meta_test",
    "refine_prototypes",
    "remove_class",
    "select_transduction",
    "stratified_folds",
]
