"""The README's "Use it from the Hub" block runs as written, where hf_metatransfer cannot be imported.

Tiny stand-ins of each artifact are pushed to the test Hub under the repo ids the block names (the translation
adapter's base under SmolLM2's own id, as a pushed adapter names it), and the block runs in a child process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from peft import LoraConfig, get_peft_model

from hf_metatransfer.data import SMOLLM2_135M
from hf_metatransfer.hub import push_adapted, push_folder
from hf_metatransfer.meta import FOMAML, ProtoNets, adapted_model
from hf_metatransfer.translation import add_lora
from tests.hub_server import TOKEN, HubServer, point_client_at
from tests.meta_fixtures import tiny_bert
from tests.test_meta_adapted import tiny_mean_pool
from tests.test_stock_loading import fine_tuned, save, support, word_tokenizer
from tests.test_translation_models import char_tokenizer, tiny_llama

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block() -> str:
    section = README.read_text().split("## Use it from the Hub", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the section has one Python block, run here"
    return blocks[0]


def push_artifacts(hub: HubServer, tmp: Path) -> None:
    tok, push = word_tokenizer(), {"token": TOKEN, "endpoint": hub.url, "backoff": 0.01}
    push_folder(fine_tuned(tmp / "lpft", tok, lp_ft=True), "me/minilm-intents-lpft", **push)
    for repo, init, algorithm in (("me/minilm-meta-fomaml", tiny_bert(), FOMAML(inner_steps=1, inner_lr=0.5)),
                                  ("me/e5-meta-protonets", tiny_mean_pool(), ProtoNets())):  # fmt: skip
        algorithm.setup(init)
        folder = tmp / repo.replace("/", "--")  # not the repo id: a folder of that name would shadow the repo
        push_folder(save(init, tok, folder), repo, **push)
        push_adapted(save(adapted_model(init, algorithm, support(tok)), tok, tmp / f"{folder.name}-0"), repo,
                     "episode-0", **push)  # fmt: skip
    push_folder(save(tiny_bert(), tok, tmp / "lora"), "me/minilm-meta-lora", **push)
    base = T.AutoModelForSequenceClassification.from_pretrained("me/minilm-meta-lora", token=TOKEN)
    lora = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=2))
    lora.save_pretrained(tmp / "lora-0")
    push_adapted(tmp / "lora-0", "me/minilm-meta-lora", "episode-0", **push)
    push_folder(save(tiny_llama(), char_tokenizer(), tmp / "smollm2"), SMOLLM2_135M, **push)
    translator = add_lora(T.AutoModelForCausalLM.from_pretrained(SMOLLM2_135M, token=TOKEN), r=2)
    translator.save_pretrained(tmp / "metalora")
    push_folder(tmp / "metalora", "me/smollm2-django-metalora", **push)


def test_readme_hub_block_runs_without_the_package(tmp_path):
    server = HubServer(tmp_path / "hub").start()
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            point_client_at(server.url, monkeypatch)
            torch.manual_seed(0)
            push_artifacts(server, tmp_path)
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
               "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}  # fmt: skip
        code = 'import sys; sys.modules["hf_metatransfer"] = None\n' + readme_block()
        child = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=300)  # fmt: skip
        assert child.returncode == 0, child.stderr[-4000:]
        printed = child.stdout.strip().splitlines()
        assert len(printed) == 3 and "'label'" in printed[0] and "'label'" in printed[1], child.stdout
        assert not server.unknown
    finally:
        server.stop()
