"""Publishing against the project's Hub server with the real huggingface_hub client (nothing of it mocked)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import datasets
import pytest
import torch
import transformers as T
from accelerate import PartialState
from huggingface_hub import HfApi, snapshot_download
from peft import LoraConfig, PeftModel, get_peft_model

from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer
from hf_metatransfer.hub import (
    FineTunedCardData,
    HubCardMixin,
    PublishError,
    Result,
    push_adapted,
    push_episodes,
    push_folder,
    write_card,
)
from hf_metatransfer.metrics import compute_metrics_fn
from hf_metatransfer.recipes.publish import cli as publish_cli
from tests.hub_server import TOKEN, HubServer, hub_fixture  # noqa: F401 - the fixture 'hub'

TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20)


def tiny_bert(seed: int = 0) -> T.BertForSequenceClassification:
    torch.manual_seed(seed)
    return T.BertForSequenceClassification(T.BertConfig(**TINY, num_labels=3)).eval()


def saved_model(folder: Path, seed: int = 0) -> T.PreTrainedModel:
    model = tiny_bert(seed)
    model.save_pretrained(folder)
    write_card(
        FineTunedCardData(model_id="tester/tiny", results=[Result.binomial("accuracy", 0.75, 40)]), folder
    )
    return model


def tree_state(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's content hash and modification time: what 'the folder is untouched' means."""
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_no_token(
    hub: HubServer, *folders: Path, records: list[logging.LogRecord] = (), text: str = ""
) -> None:
    """The token is in no file written locally, no blob the Hub stores, no log record and no message."""
    needle = TOKEN.encode()
    for folder in folders:
        for path in folder.rglob("*"):
            assert not path.is_file() or needle not in path.read_bytes(), f"token written into {path}"
    for blob in hub.blob_paths():
        assert needle not in blob.read_bytes(), "token pushed to the Hub"
    for record in records:
        assert TOKEN not in record.getMessage(), f"token logged by {record.name}"
    assert TOKEN not in text


def test_push_then_from_pretrained_gives_bit_identical_weights(hub, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "model"
    model = saved_model(folder)
    first = push_folder(folder, "tester/tiny", token=TOKEN, endpoint=hub.url)
    assert hub.count("lfs-upload", "PUT") == 1  # model.safetensors went through the LFS batch API

    local = snapshot_download("tester/tiny", token=TOKEN, cache_dir=tmp_path / "cache")
    for name in ("model.safetensors", "config.json", "README.md", "learning_curve.png"):
        if (folder / name).exists():
            assert (Path(local) / name).read_bytes() == (folder / name).read_bytes(), name
    loaded = T.AutoModelForSequenceClassification.from_pretrained("tester/tiny", token=TOKEN)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())

    # A second commit; the first one stays reachable by its sha.
    (folder / "extra.txt").write_text("second commit\n")
    second = HfApi(endpoint=hub.url, token=TOKEN).upload_file(
        path_or_fileobj=folder / "extra.txt", path_in_repo="extra.txt", repo_id="tester/tiny"
    )
    assert second.oid != first.oid
    old = snapshot_download("tester/tiny", revision=first.oid, token=TOKEN, cache_dir=tmp_path / "cache")
    assert not (Path(old) / "extra.txt").exists() and "extra.txt" in hub.files("tester/tiny")
    assert_no_token(hub, folder, Path(local), records=caplog.records)


def test_lora_adapter_round_trip_under_adapted_task(hub, tmp_path):
    init = tmp_path / "init"
    saved_model(init)
    push_folder(init, "tester/meta-init", token=TOKEN, endpoint=hub.url)
    base = T.AutoModelForSequenceClassification.from_pretrained(init)
    lora = LoraConfig(
        task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=False
    )
    adapted = get_peft_model(base, lora).eval()
    adapter_dir = tmp_path / "adapter"
    adapted.save_pretrained(adapter_dir)
    push_adapted(adapter_dir, "tester/meta-init", "intents-de", token=TOKEN, endpoint=hub.url)
    assert "adapted/intents-de/adapter_model.safetensors" in hub.files("tester/meta-init")

    fresh = T.AutoModelForSequenceClassification.from_pretrained("tester/meta-init")
    reloaded = PeftModel.from_pretrained(fresh, "tester/meta-init", subfolder="adapted/intents-de").eval()
    expected = {k: v for k, v in adapted.state_dict().items() if "lora_" in k}
    got = reloaded.state_dict()
    assert expected and all(torch.equal(got[k], v) for k, v in expected.items())
    ids = torch.randint(1, 64, (2, 7))
    assert torch.equal(reloaded(input_ids=ids).logits, adapted(input_ids=ids).logits)


def test_fine_tuning_trainer_pushes_our_card_and_no_token(hub, tmp_path, caplog):
    assert issubclass(FineTuningTrainer, HubCardMixin), (
        "FineTuningTrainer must mix in hf_metatransfer.hub.HubCardMixin (class FineTuningTrainer(HubCardMixin, "
        "Trainer)) so that push_to_hub uploads our card and hub_token stays out of training_args.bin"
    )
    caplog.set_level(logging.INFO)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 64, (24, 6), generator=g)
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 3).tolist()})
    args = FineTuningConfig(
        output_dir=str(tmp_path / "out"),
        push_to_hub=True,
        hub_model_id="tester/ft",
        hub_token=TOKEN,
        layerwise_lr_decay=0.8,
        num_train_epochs=2,
        per_device_train_batch_size=8,
        eval_strategy="epoch",
        save_strategy="epoch",
        hub_strategy="end",  # checkpoints are written (and scanned for the token), pushed at the end only
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = FineTuningTrainer(
        model=tiny_bert(),
        args=args,
        train_dataset=data,
        eval_dataset=data,
        compute_metrics=compute_metrics_fn(["accuracy"]),
    )
    trainer.train()
    hub.fail("commit", times=1, mode="500")  # the upload is retried, not the save
    trainer.push_to_hub(language="en", dataset_tags="tester/toy-intents")
    assert hub.count("commit") == 2 and any("retrying the upload" in r.getMessage() for r in caplog.records)

    pushed = hub.files("tester/ft")
    card = pushed["README.md"].decode()
    assert "FineTuningTrainer" in card and "Layer-wise learning-rate decay" in card and "0.8^" in card
    assert (
        "- tester/toy-intents" in card and "hf-metatransfer" in card and "| validation | accuracy |" in card
    )
    assert "learning_curve.png" in pushed and "training_args.bin" in pushed
    assert torch.load(tmp_path / "out" / "training_args.bin", weights_only=False).hub_token is None
    assert trainer.args.hub_token == TOKEN  # still usable for the next push
    assert (tmp_path / "out" / "checkpoint-6" / "training_args.bin").is_file()
    assert not any(p.startswith("checkpoint-") for p in pushed)
    assert_no_token(hub, tmp_path / "out", records=caplog.records)


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_a_failure_once_is_retried(hub, tmp_path, caplog, mode):
    folder = tmp_path / "model"
    saved_model(folder)
    hub.fail("commit", times=1, mode=mode)
    commit = push_folder(folder, "tester/flaky", token=TOKEN, endpoint=hub.url, backoff=0.01)
    assert hub.count("commit") == 2 and commit.oid == hub.repos[("model", "tester/flaky")].branches["main"]
    assert any("retry 1 of 5" in r.getMessage() for r in caplog.records)
    assert_no_token(hub, folder, records=caplog.records)


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_a_failing_hub_raises_and_leaves_the_folder_intact(hub, tmp_path, caplog, mode):
    hub.echo_auth_in_errors = True  # like a proxy that quotes the request: the token must still not leak
    folder = tmp_path / "model"
    saved_model(folder)
    before = tree_state(folder)
    hub.fail("commit", times=None, mode=mode)
    with pytest.raises(PublishError) as raised:
        push_folder(folder, "tester/down", token=TOKEN, endpoint=hub.url, max_retries=2, backoff=0.01)
    message = str(raised.value)
    assert "tester/down" in message and "intact" in message and "after 3 attempts" in message
    assert hub.count("commit") == 3
    assert tree_state(folder) == before
    assert_no_token(hub, folder, records=caplog.records, text=message)


def test_a_folder_holding_the_token_is_refused_before_anything_is_sent(hub, tmp_path):
    folder = tmp_path / "model"
    saved_model(folder)
    (folder / "notes.json").write_text(json.dumps({"hub_token": TOKEN}))
    with pytest.raises(PublishError, match=r"notes\.json.*contain the Hub token") as raised:
        push_folder(folder, "tester/leaky", token=TOKEN, endpoint=hub.url)
    assert TOKEN not in str(raised.value) and not hub.requests


def test_only_the_main_process_pushes(hub, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    saved_model(folder)
    # Rank 1 of a torchrun launch, before accelerate is set up (an earlier Trainer in this process set it up).
    monkeypatch.setattr(PartialState, "_shared_state", {})
    monkeypatch.setenv("RANK", "1")
    assert push_folder(folder, "tester/rank1", token=TOKEN, endpoint=hub.url) is None
    assert not hub.requests


def test_evaluation_episodes_round_trip_as_a_dataset(hub, tmp_path):
    episodes = datasets.Dataset.from_dict(
        {
            "episode": [0, 0, 0, 0, 1, 1, 1, 1],
            "role": ["support", "support", "query", "query"] * 2,
            "text": [
                "lights on",
                "play jazz",
                "lamp on",
                "some jazz",
                "timer 5",
                "rain?",
                "alarm 7",
                "sunny?",
            ],
            "label": [0, 1, 0, 1, 0, 1, 0, 1],
        }
    )
    hub.fail("commit", times=1, mode="drop")
    push_episodes(episodes, "tester/episodes", token=TOKEN, backoff=0.01)
    assert hub.count("commit") == 2
    local = snapshot_download(
        "tester/episodes", repo_type="dataset", token=TOKEN, cache_dir=tmp_path / "cache"
    )
    files = sorted(Path(local).rglob("*.parquet"))
    assert len(files) == 1
    reloaded = datasets.Dataset.from_parquet(str(files[0]))
    assert reloaded.to_dict() == episodes.to_dict()


def test_publish_recipe_writes_the_card_from_results_json_and_pushes(hub, tmp_path):
    folder = tmp_path / "out"
    tiny_bert().save_pretrained(folder)
    saved = {
        "results": {
            "model": "embedded",
            "dataset": "ha_intents",
            "train_examples": 592,
            "test_examples": 2000,
            "train_seconds": 61.2,
            "test_accuracy": 0.9,
            "test_f1": 0.88,
            "linear_probe": {
                "C": 0.1,
                "seconds": 1.5,
                "train_accuracy": 1.0,
                "num_examples": 592,
                "solver": "logistic",
                "layer": "classifier",
                "test_accuracy": 0.8,
            },
        },
        "strategies": {"lp_ft": True, "linear_probe": "logistic", "layerwise_lr_decay": 0.9},
    }
    (folder / "results.json").write_text(json.dumps(saved))
    url = publish_cli(
        [
            "--folder",
            str(folder),
            "--repo_id",
            "tester/minilm-intents",
            "--token",
            TOKEN,
            "--language",
            "en",
            "--max_retries",
            "1",
        ]
    )
    assert url.startswith(hub.url) and (folder / "README.md").is_file()
    card = hub.files("tester/minilm-intents")["README.md"].decode()
    assert (
        "base_model: sentence-transformers/all-MiniLM-L6-v2" in card and "[0.88" in card
    )  # Wilson CI of 0.9
    assert "after the linear probe (LP)" in card and "layerwise_lr_decay: 0.9" in card

    empty = tmp_path / "empty"
    tiny_bert().save_pretrained(empty)
    with pytest.raises(FileNotFoundError, match="no README.md and no results.json"):
        publish_cli(["--folder", str(empty), "--repo_id", "tester/x", "--token", TOKEN])


def test_meta_learned_algorithm_state_loads_from_a_pushed_repo(hub, tmp_path, caplog):
    from safetensors.torch import save_file

    from hf_metatransfer.meta import ProtoNets, load_algorithm_state
    from hf_metatransfer.meta.trainer import ALGORITHM_STATE

    learned = ProtoNets(projection_dim=4)
    learned.setup(tiny_bert())
    with torch.no_grad():
        learned.projection.weight.add_(0.5)
    folder = tmp_path / "meta"
    saved_model(folder)
    save_file({k: v.contiguous() for k, v in learned.state_dict().items()}, str(folder / ALGORITHM_STATE))
    push_folder(folder, "tester/protonets-init", token=TOKEN, endpoint=hub.url)
    fresh = ProtoNets(projection_dim=4)
    fresh.setup(T.AutoModelForSequenceClassification.from_pretrained("tester/protonets-init"))
    assert load_algorithm_state(fresh, "tester/protonets-init")
    assert torch.equal(fresh.projection.weight, learned.projection.weight)
    push_folder(
        tmp_path / "meta", "tester/plain", token=TOKEN, endpoint=hub.url, ignore_patterns=[ALGORITHM_STATE]
    )
    assert not load_algorithm_state(ProtoNets(), "tester/plain")
    with caplog.at_level(logging.WARNING):  # offline and not cached: unknown, and said so
        assert not load_algorithm_state(ProtoNets(), "tester/never-pushed", local_files_only=True)
    assert "offline and not in the cache" in caplog.text
