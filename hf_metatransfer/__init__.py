"""hf-metatransfer: transfer learning and meta-learning of text models on the Hugging Face stack.

The layer map (:func:`build_layer_map`) is the spine: every fine-tuning strategy is a policy over it.
"""

from .conventions import InputConventions, conventions_for
from .episodes import EpisodeBuilder, EpisodeCollator, EpisodeDataset, TokenStore, tokenize_dataset
from .finetune import (
    FineTuningConfig,
    FineTuningTrainer,
    SearchResult,
    cross_validated_search,
    fast_linear_probe,
)
from .layers import LayerGroup, LayerMap, LayerMapError, LayerMapSpec, build_layer_map
from .meta import MetaTrainer, MetaTrainingConfig, build_algorithm, meta_test
from .metrics import compute_metrics_fn, load_metric
from .param_groups import (
    layerwise_param_groups,
    no_decay_param_names,
    reinit_,
    relative_grad_norms,
    set_trainable_,
    trainable_depths,
)

__version__ = "0.1.0"

__all__ = [
    "EpisodeBuilder",
    "EpisodeCollator",
    "EpisodeDataset",
    "FineTuningConfig",
    "FineTuningTrainer",
    "InputConventions",
    "LayerGroup",
    "LayerMap",
    "LayerMapError",
    "LayerMapSpec",
    "MetaTrainer",
    "MetaTrainingConfig",
    "SearchResult",
    "TokenStore",
    "build_algorithm",
    "build_layer_map",
    "compute_metrics_fn",
    "conventions_for",
    "cross_validated_search",
    "fast_linear_probe",
    "layerwise_param_groups",
    "load_metric",
    "meta_test",
    "no_decay_param_names",
    "reinit_",
    "relative_grad_norms",
    "set_trainable_",
    "tokenize_dataset",
    "trainable_depths",
]
