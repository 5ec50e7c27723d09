"""Mean pooling, and a BERT classifier whose head reads the mean of the token states instead of the pooler.

Sentence encoders (all-MiniLM-L6-v2, multilingual-e5) are trained to embed by the masked mean; some packaged
checkpoints (the rebuilt e5) carry no trained pooler at all, so a head on the pooler would start on noise.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertForSequenceClassification, BertModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertPreTrainedModel


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states under the attention mask (sentence-transformers pooling)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class MeanPoolBertForSequenceClassification(BertForSequenceClassification):
    """BERT with the head on the attention-masked mean of the last hidden states, and no pooler.

    Parameter names are ``BertForSequenceClassification``'s (``bert.*``, ``classifier.*``), so the layer map, the
    fast linear probe, the trainers and the meta-learning algorithms (``output_hidden_states``) work unchanged.
    """

    def __init__(self, config) -> None:
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
