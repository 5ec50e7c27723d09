"""Hub failures a user meets: offline mode, a bad token, a token without write access, a missing repo, the Hub
down when fine-tuning starts. Each fails with a message that names the repo and what to check, at once where
retrying cannot help, and leaves the local folder as it was."""

from __future__ import annotations

import time

import pytest

from hf_metatransfer.hub.publish import PublishError, push_folder
from tests.hub_server import TOKEN, hub_fixture  # noqa: F401 - the fixture 'hub'
from tests.test_publish import saved_model


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "model"
    saved_model(path)
    return path


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_fails_at_once_naming_the_variable(hub, folder, refused, monkeypatch, variable):
    import huggingface_hub.constants

    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", variable == "HF_HUB_OFFLINE")
    start = time.perf_counter()
    with refused(PublishError, f"{variable} is set", "unset it", "intact", folders=(folder,)):
        push_folder(folder, "tester/offline", token=TOKEN, endpoint=hub.url)
    assert time.perf_counter() - start < 2 and hub.count("create") == 0


def test_an_invalid_token_says_how_to_log_in(hub, folder, refused):
    with refused(PublishError, "tester/bad-token", "hf auth login", "HF_TOKEN", "intact", folders=(folder,)):
        push_folder(folder, "tester/bad-token", token="hf_not_the_token", endpoint=hub.url, backoff=0.01)
    assert hub.count("create") == 1, "a refusal is not retried"


@pytest.mark.parametrize(
    ("status", "hint"), [("403", "write access"), ("404", "check the repo id (owner/name)")]
)
def test_a_refusal_says_what_to_check_and_is_not_retried(hub, folder, refused, status, hint):
    hub.fail("create", times=None, mode=status)
    with refused(PublishError, "tester/refused", hint, "intact", folders=(folder,)):
        push_folder(folder, "tester/refused", token=TOKEN, endpoint=hub.url, backoff=0.01)
    assert hub.count("create") == 1


def test_the_hub_down_when_finetuning_starts_is_one_clear_error(hub, tmp_path, refused, monkeypatch):
    """Trainer creates the repo in its constructor: the failure must come before training, without a raw
    client traceback, and name the repo."""
    from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer
    from tests.tiny_models import tiny_model

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.fail("create", times=None, mode="500")
    out = tmp_path / "out"
    args = FineTuningConfig(output_dir=str(out), push_to_hub=True, hub_model_id="tester/down-at-start",
                            report_to="none", use_cpu=True)  # fmt: skip
    with refused(PublishError, "tester/down-at-start", "after 3 attempts", folders=(tmp_path,)):
        FineTuningTrainer(model=tiny_model("bert"), args=args)
    assert not out.exists() or not any(out.iterdir())
