import torch
import transformers as T

from hf_metatransfer.layers import build_layer_map
from hf_metatransfer.pooling import MeanPoolBertForSequenceClassification, mean_pool


def test_head_reads_the_masked_mean_and_names_match_bert():
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
                       num_labels=3, hidden_dropout_prob=0.0)  # fmt: skip
    model = MeanPoolBertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2]), output_hidden_states=True)
    hidden = model.bert(ids, attention_mask=mask).last_hidden_state
    manual = torch.stack([hidden[0, :3].mean(0), hidden[1].mean(0)])
    assert torch.allclose(mean_pool(hidden, mask), manual, atol=1e-6)
    assert torch.allclose(out.logits, model.classifier(manual), atol=1e-5)
    assert out.loss is not None and len(out.hidden_states) == 3
    bert_names = {n for n, _ in T.BertForSequenceClassification(cfg).named_parameters() if "pooler" not in n}
    assert {n for n, _ in model.named_parameters()} == bert_names
    assert set(build_layer_map(model).head.param_names) == {"classifier.weight", "classifier.bias"}
