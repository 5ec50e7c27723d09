import re

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_metatransfer.layers import LayerMapError, LayerMapSpec, build_layer_map
from tests.tiny_models import num_blocks, tiny_model

# What each architecture's head is (task-specific, outside base_model_prefix); tied LM heads have no own tensor.
HEADS = {
    "bert": {"classifier.weight", "classifier.bias"},
    "roberta": {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"},
    "xlm-roberta": {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"},
    "distilbert": {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"},
    "deberta-v2": {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"},
    "electra": {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"},
    "modernbert": {"head.dense.weight", "head.norm.weight", "classifier.weight", "classifier.bias"},
    "gpt2": {"score.weight"},
    "llama": {"score.weight"},
    "qwen2": {"score.weight"},
    "t5": set(),
    "mt5": set(),
    "marian": set(),
    "bart": {"classification_head.dense.weight", "classification_head.dense.bias",
             "classification_head.out_proj.weight", "classification_head.out_proj.bias"},
}  # fmt: skip
# Where block i lives, encoder stack first for encoder-decoder models.
STACKS = {
    "bert": ["bert.encoder.layer"], "roberta": ["roberta.encoder.layer"], "xlm-roberta": ["roberta.encoder.layer"],
    "distilbert": ["distilbert.transformer.layer"], "deberta-v2": ["deberta.encoder.layer"],
    "electra": ["electra.encoder.layer"], "modernbert": ["model.layers"], "gpt2": ["transformer.h"],
    "llama": ["model.layers"], "qwen2": ["model.layers"], "t5": ["encoder.block", "decoder.block"],
    "mt5": ["encoder.block", "decoder.block"], "marian": ["model.encoder.layers", "model.decoder.layers"],
    "bart": ["model.encoder.layers", "model.decoder.layers"],
}  # fmt: skip


def _expected_block_prefixes(arch, model):
    prefixes = []
    for stack in STACKS[arch]:
        module = model.get_submodule(stack)
        prefixes += [f"{stack}.{i}." for i in range(len(module))]
    return prefixes


def _check_map(arch, model, lm, name_prefix=""):
    names = [n for n, _ in model.named_parameters()]
    assert sorted(n for g in lm for n in g.param_names) == sorted(names), (
        "every parameter mapped exactly once"
    )
    assert lm.num_blocks == num_blocks(arch)
    assert [g.depth for g in lm] == list(range(lm.num_blocks + 2))
    for group, prefix in zip(lm.blocks, _expected_block_prefixes(arch, tiny_model(arch))):
        inside = [n for n in group.param_names if (name_prefix + prefix) in n]
        assert inside, f"{group.name} holds nothing of {prefix}"
        # Parameters of the block itself are all here; extras are only final norms / poolers after the stack.
        others = [n for n in group.param_names if (name_prefix + prefix) not in n]
        assert all(re.search(r"norm|pooler|ln_f", n) for n in others), others
    assert any("embed" in n or "wte" in n or "shared" in n for n in lm.embeddings.param_names)


def test_layer_map_of_every_architecture(arch):
    model = tiny_model(arch)
    lm = build_layer_map(model)
    _check_map(arch, model, lm)
    assert set(lm.head.param_names) == HEADS[arch]


def test_layer_map_of_lora_peft_models(arch):
    model = tiny_model(arch)
    task = "SEQ_CLS" if arch not in ("t5", "mt5", "marian") else "SEQ_2_SEQ_LM"
    heads = r"(classifier|pre_classifier|score|classification_head|head|pooler)(\..*)?"
    extra = {"modules_to_save": ["classification_head"]} if arch == "bart" else {}
    config = LoraConfig(task_type=task, target_modules="all-linear", exclude_modules=heads, r=2, **extra)
    peft_model = get_peft_model(model, config)
    lm = build_layer_map(peft_model)
    _check_map(arch, peft_model, lm, name_prefix="")
    lora = [n for g in lm.blocks for n in g.param_names if "lora_" in n]
    assert lora, "LoRA matrices join the blocks they adapt"
    group_of = {n: g.name for g in lm for n in g.param_names}
    for name in (n for n in group_of if "lora_" in n):
        base = re.sub(r"lora_[AB]\.default\.weight$", "base_layer.weight", name)
        assert group_of[name] == group_of[base], f"{name} is not where the layer it adapts is"
    trainable_head = [n for n in lm.head.param_names if dict(peft_model.named_parameters())[n].requires_grad]
    if HEADS[arch]:
        assert trainable_head and all("modules_to_save" in n or "lora_" in n for n in trainable_head)


def test_t5_places_final_norms_and_stacks_in_documented_order():
    model = tiny_model("t5")
    lm = build_layer_map(model)
    assert "encoder.final_layer_norm.weight" in lm.blocks[1].param_names  # last encoder block
    assert "decoder.final_layer_norm.weight" in lm.blocks[-1].param_names
    assert lm.embeddings.param_names == ("shared.weight",)


def test_bert_pooler_joins_top_block_and_xlmr_order_is_depth_order():
    lm = build_layer_map(tiny_model("bert"))
    assert "bert.pooler.dense.weight" in lm.blocks[-1].param_names
    lm = build_layer_map(tiny_model("xlm-roberta"))
    assert lm.groups[0].name == "embeddings" and lm.groups[-1].name == "head"


def test_real_minilm_checkpoint():
    from transformers import AutoModelForSequenceClassification

    from hf_metatransfer.data import minilm_path

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=4)
    lm = build_layer_map(model)
    assert lm.num_blocks == 6
    assert set(lm.head.param_names) == {"classifier.weight", "classifier.bias"}
    for i, block in enumerate(lm.blocks):
        assert all(f"encoder.layer.{i}." in n or "pooler" in n for n in block.param_names)


class NoBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        self.out = torch.nn.Linear(4, 2)


def test_unmappable_architecture_names_class_and_fix():
    with pytest.raises(LayerMapError, match=r"NoBlocks.*LayerMapSpec\(blocks="):
        build_layer_map(NoBlocks())


def test_user_mapping_by_regex_and_callable():
    model = NoBlocks()
    lm = build_layer_map(model, LayerMapSpec(blocks=r"body\.(\d+)\.", head=r"^out\."))
    assert [g.param_names for g in lm] == [
        ("emb.weight",),
        ("body.0.weight", "body.0.bias"),
        ("body.1.weight", "body.1.bias"),
        ("out.weight", "out.bias"),
    ]
    lm2 = build_layer_map(
        model,
        lambda n: (
            ("head", None)
            if n.startswith("out")
            else ("block", int(n.split(".")[1]))
            if n.startswith("body")
            else ("embeddings", None)
        ),
    )
    assert [g.param_names for g in lm2] == [g.param_names for g in lm]


@pytest.mark.parametrize(
    "sel,expected", [("first", [0]), ("middle", [1]), ("last", [2]), (-1, [2]), ([0, 2], [0, 2])]
)
def test_resolve_blocks(sel, expected):
    assert build_layer_map(tiny_model("bert")).resolve_blocks(sel) == expected


def test_resolve_blocks_out_of_range():
    with pytest.raises(
        ValueError, match="Block index 3 is out of range: BertForSequenceClassification has 3 blocks"
    ):
        build_layer_map(tiny_model("bert")).resolve_blocks([3])
