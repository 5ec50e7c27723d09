"""A BERT classifier whose head reads the attention-masked mean of the last hidden states, for Hub custom code.

No stock transformers class mean-pools before its head, so ``save_pretrained`` copies this file next to the
weights and writes ``auto_map``: ``AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)``
and ``pipeline(..., trust_remote_code=True)`` then load it without hf_metatransfer. It must therefore import only
torch and transformers. Its own ``model_type`` makes stock transformers refuse it without ``trust_remote_code``
instead of silently loading ``BertForSequenceClassification`` (a head on a pooler the checkpoint lacks).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertPreTrainedModel


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states under the attention mask (sentence-transformers pooling)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class MeanPoolBertConfig(BertConfig):
    """``BertConfig`` under its own ``model_type``, so that the Auto classes find the mean-pooled head."""

    model_type = "meanpool_bert"

    @classmethod
    def get_config_dict(cls, *args, **kwargs) -> tuple[dict, dict]:
        """A stock BERT checkpoint (e5, MiniLM) is this model's checkpoint: no warning about its ``model_type``."""
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") == BertConfig.model_type:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs


class MeanPoolBertModel(BertModel):
    """The encoder alone, for ``AutoModel`` (embeddings: mean-pool its last hidden states); no pooler."""

    config_class = MeanPoolBertConfig

    def __init__(self, config: BertConfig, add_pooling_layer: bool = False) -> None:
        super().__init__(config, add_pooling_layer=add_pooling_layer)


class MeanPoolBertForSequenceClassification(BertForSequenceClassification):
    """BERT with the head on the attention-masked mean of the last hidden states, and no pooler.

    Parameter names are ``BertForSequenceClassification``'s (``bert.*``, ``classifier.*``), so the layer map, the
    fast linear probe, the trainers and the meta-learning algorithms (``output_hidden_states``) work unchanged.
    """

    config_class = MeanPoolBertConfig

    def __init__(self, config: BertConfig) -> None:
        if not isinstance(config, MeanPoolBertConfig):  # a BertConfig: saved under the mean-pooled model_type
            config = MeanPoolBertConfig.from_dict({**config.to_dict(), "model_type": "meanpool_bert"})
        BertPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, **kwargs) -> SequenceClassifierOutput:  # fmt: skip
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        output_hidden_states=output_hidden_states, return_dict=True)  # fmt: skip
        hidden = out.last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
        logits = self.classifier(self.dropout(mean_pool(hidden, attention_mask)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)

    def save_pretrained(self, *args, **kwargs) -> None:
        """Also map ``AutoModel`` to the encoder in this file, so embedding code (the cards' snippets) loads it."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                "AutoModel": f"{__name__.rsplit('.', 1)[-1]}.MeanPoolBertModel"}  # fmt: skip
        super().save_pretrained(*args, **kwargs)


# save_pretrained copies this file and writes auto_map, so that the Hub copy loads as custom code.
MeanPoolBertConfig.register_for_auto_class("AutoConfig")
MeanPoolBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
