"""Wrong use of the meta-training API: refused before training, the message naming the problem and the fix, the
output folder untouched."""

from __future__ import annotations

import json

import pytest

from hf_metatransfer.episodes import EpisodeBuilder, EpisodeCollator, TokenStore
from hf_metatransfer.meta import MetaTrainer, MetaTrainingConfig
from tests.meta_fixtures import tiny_bert, token_classes, token_episodes


def config(tmp_path, **kw) -> MetaTrainingConfig:
    base = dict(output_dir=str(tmp_path / "run"), algorithm="fomaml", inner_steps=1, inner_lr=0.3,
                meta_batch_size=2, max_steps=2, eval_steps=0, save_steps=0, disable_tqdm=True)  # fmt: skip
    return MetaTrainingConfig(**{**base, **kw})


@pytest.mark.parametrize(
    ("head", "episodes"), [(3, 5), (5, 3)], ids=["head-smaller-than-episodes", "head-larger-than-episodes"]
)
def test_a_head_that_is_not_n_way_is_refused_before_training(tmp_path, refused, head, episodes):
    data = token_classes()
    train = EpisodeBuilder(data, label_column="label", text_column=None).sampler(episodes, 2, 3, seed=0)
    collate = EpisodeCollator(TokenStore(data, pad_token_id=0))
    trainer = MetaTrainer(tiny_bert(n_way=head), config(tmp_path), train, collate)
    with refused(
        ValueError, f"num_labels={head}", f"{episodes}-way", f"num_labels={episodes})", folders=(tmp_path,)
    ):
        trainer.train()


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil", "reptile", "metasgd"])
def test_inner_steps_zero_is_refused_for_algorithms_with_an_inner_loop(tmp_path, refused, algorithm):
    with refused(ValueError, "inner_steps=0", "multi-task learning", "inner_steps >= 1"):
        config(tmp_path, algorithm=algorithm, inner_steps=0)


@pytest.mark.parametrize(
    ("options", "phrases"),
    [
        ({"lr_scheduler_type": "cosine_annealing"}, ["lr_scheduler_type='cosine_annealing'", "use one of"]),
        ({"lr_scheduler_type": "constant", "warmup_steps": 5}, ["has no warmup", "constant_with_warmup"]),
        ({"warmup_steps": -1}, ["warmup_steps=-1", "ratio of max_steps"]),
        ({"warmup_steps": 2.5}, ["warmup_steps=2.5", "an integer >= 0"]),
        ({"optim": "adam"}, ["optim='adam'", "adamw_torch"]),
        ({"bf16": True, "fp16": True}, ["bf16 and fp16 are both set", "choose one"]),
        ({"algorithm": "mamlx"}, ["Unknown algorithm 'mamlx'", "use one of"]),
        ({"fast_weights": "body"}, ["Unknown fast_weights 'body'", "use one of"]),
        ({"meta_batch_size": 0}, ["meta_batch_size", ">= 1"]),
        ({"early_stopping_patience": 2}, ["early_stopping_patience needs eval_steps > 0"]),
    ],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, dict) else None,
)
def test_config_errors_name_the_option_and_the_fix(tmp_path, refused, options, phrases):
    with refused(ValueError, *phrases):
        config(tmp_path, **options)


def _saved_run(tmp_path):
    train, _, collate = token_episodes()
    MetaTrainer(tiny_bert(), config(tmp_path, save_final_checkpoint=True), train, collate).train()
    return train, collate, tmp_path / "run" / "checkpoint-2"


def test_a_truncated_checkpoint_weights_file_is_named(tmp_path, refused):
    train, collate, checkpoint = _saved_run(tmp_path)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    trainer = MetaTrainer(
        tiny_bert(), config(tmp_path, resume_from_checkpoint="last", max_steps=4), train, collate
    )
    with refused(ValueError, str(weights), "damaged", "Resume from another checkpoint", folders=(tmp_path,)):
        trainer.train()


def test_an_unreadable_trainer_state_is_named(tmp_path, refused):
    train, collate, checkpoint = _saved_run(tmp_path)
    (checkpoint / "meta_trainer_state.json").write_text('{"step": 2, "best_met')
    trainer = MetaTrainer(
        tiny_bert(), config(tmp_path, resume_from_checkpoint="last", max_steps=4), train, collate
    )
    with refused(ValueError, "meta_trainer_state.json is unreadable", "resume from another checkpoint",
                 folders=(tmp_path,)):  # fmt: skip
        trainer.train()


def test_a_trainer_state_of_another_version_is_named(tmp_path, refused):
    train, collate, checkpoint = _saved_run(tmp_path)
    state = json.loads((checkpoint / "meta_trainer_state.json").read_text())
    (checkpoint / "meta_trainer_state.json").write_text(json.dumps({**state, "unknown_field": 1}))
    trainer = MetaTrainer(
        tiny_bert(), config(tmp_path, resume_from_checkpoint="last", max_steps=4), train, collate
    )
    with refused(ValueError, "meta_trainer_state.json is unreadable", folders=(tmp_path,)):
        trainer.train()


def test_resume_last_without_a_checkpoint_says_how_to_start(tmp_path, refused):
    train, _, collate = token_episodes()
    trainer = MetaTrainer(tiny_bert(), config(tmp_path, resume_from_checkpoint="last"), train, collate)
    with refused(FileNotFoundError, "No complete checkpoint-<step> folder", "drop resume_from_checkpoint",
                 folders=(tmp_path,)):  # fmt: skip
        trainer.train()


def test_a_folder_that_is_not_a_checkpoint_is_refused(tmp_path, refused):
    (tmp_path / "elsewhere").mkdir()
    train, _, collate = token_episodes()
    trainer = MetaTrainer(tiny_bert(), config(tmp_path, resume_from_checkpoint=str(tmp_path / "elsewhere")), train,
                          collate)  # fmt: skip
    with refused(FileNotFoundError, "is not a complete MetaTrainer checkpoint", folders=(tmp_path,)):
        trainer.train()


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_a_head_lr_on_a_tied_lm_head_is_refused(refused, arch):
    import transformers as T

    from hf_metatransfer.param_groups import layerwise_param_groups

    model = (T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50)) if arch == "gpt2" else
             T.T5ForConditionalGeneration(T.T5Config(d_model=16, d_ff=20, num_layers=2, num_heads=2, d_kv=8,
                                                     vocab_size=50)))  # fmt: skip
    with refused(
        ValueError, "head_learning_rate=0.001 has no head", "tie_word_embeddings", "Unset head_learning_rate"
    ):
        layerwise_param_groups(model, 1e-4, 0.9, head_lr=1e-3)
    assert layerwise_param_groups(model, 1e-4, 0.9)  # without a head LR the tied model is fine
