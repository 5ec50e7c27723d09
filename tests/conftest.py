"""Shared fixtures: offline Hugging Face caches and tiny random models of every architecture the library maps."""

import os
import tempfile

# Before any Hugging Face import: caches in a temporary folder, no network (pitfalls: HF_HOME read at import).
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_home_"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models on 2 shared cores: one intra-op thread is several times faster than two fighting over them.
torch.set_num_threads(1)

from tests.tiny_models import ARCHITECTURES, tiny_model  # noqa: E402


@pytest.fixture(params=ARCHITECTURES)
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny(arch):
    return tiny_model(arch)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state (mixed precision included): each test starts from none."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
