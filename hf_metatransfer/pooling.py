"""Mean pooling, and a BERT classifier whose head reads the mean of the token states instead of the pooler.

Sentence encoders (all-MiniLM-L6-v2, multilingual-e5) are trained to embed by the masked mean; some packaged
checkpoints (the rebuilt e5) carry no trained pooler at all, so a head on the pooler would start on noise.
The classes live in the self-contained ``modeling_meanpool_bert`` that ``save_pretrained`` ships as Hub custom code;
registering them here makes this package's Auto-class loads pick the mean-pooled head without ``trust_remote_code``.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .modeling_meanpool_bert import (
    MeanPoolBertConfig,
    MeanPoolBertForSequenceClassification,
    MeanPoolBertModel,
    mean_pool,
)

__all__ = ["MeanPoolBertConfig", "MeanPoolBertForSequenceClassification", "MeanPoolBertModel", "mean_pool"]

AutoConfig.register(MeanPoolBertConfig.model_type, MeanPoolBertConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    MeanPoolBertConfig, MeanPoolBertForSequenceClassification, exist_ok=True
)
AutoModel.register(MeanPoolBertConfig, MeanPoolBertModel, exist_ok=True)
