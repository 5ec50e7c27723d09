"""Every artifact the package pushes loads with stock transformers / PEFT where hf_metatransfer cannot be imported.

Each artifact is built with the package, pushed to the test Hub, and loaded back in one child process (imports
cost ~5 s each) through the Auto classes and ``pipeline``; its logits must be the package's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest
import torch
import transformers as T
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers

from hf_metatransfer.finetune import FineTuningConfig, FineTuningTrainer
from hf_metatransfer.hub import push_adapted, push_folder
from hf_metatransfer.meta import FOMAML, MetaTrainer, MetaTrainingConfig, ProtoNets, adapted_model
from hf_metatransfer.translation import add_lora
from tests.hub_server import TOKEN, HubServer, point_client_at
from tests.meta_fixtures import tiny_bert, token_episodes
from tests.test_meta_adapted import tiny_mean_pool
from tests.test_translation_models import char_tokenizer, tiny_llama

WORDS = "play jazz song music album turn on off the light lamp kitchen rain sunny storm weather alarm clock"
TEXTS = ["play some jazz", "turn the kitchen light off", "rain or sunny", "set an alarm clock", "music album"]
LABELS = [0, 1, 2, 2, 0]
LLAMA_IDS = [[2, 10, 11, 12, 13, 1], [2, 20, 21, 22, 1, 0]]

# Run in a process where hf_metatransfer cannot be imported: what a user without the package gets.
CHILD = """import sys; sys.modules["hf_metatransfer"] = None
import json
import torch
import transformers as T
from peft import AutoPeftModelForCausalLM, PeftModel

jobs, out = json.loads(sys.argv[1]), {}
for name, job in jobs.items():
    repo, sub, remote = job["repo"], job.get("subfolder"), job.get("trust_remote_code", False)
    kw = {"subfolder": sub} if sub else {}
    if job["kind"] == "causal-lora":
        model = AutoPeftModelForCausalLM.from_pretrained(repo).eval()
        ids = torch.tensor(job["ids"])
        out[name] = {"auto": model(input_ids=ids, attention_mask=(ids != 0).long()).logits.tolist()}
        continue
    tokenizer = T.AutoTokenizer.from_pretrained(repo)
    if job["kind"] == "lora":
        base = T.AutoModelForSequenceClassification.from_pretrained(repo)
        model = PeftModel.from_pretrained(base, repo, **kw).eval()
        pipe = T.pipeline("text-classification", model=model.merge_and_unload(), tokenizer=tokenizer)
    else:
        model = T.AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=remote, **kw).eval()
        pipe = T.pipeline("text-classification", model=repo, tokenizer=tokenizer, trust_remote_code=remote,
                          model_kwargs=kw)
    with torch.no_grad():
        logits = model(**tokenizer(job["texts"], padding=True, return_tensors="pt")).logits
    label_ids = {v: int(k) for k, v in pipe.model.config.id2label.items()}
    rows = []
    for scores in pipe(job["texts"], top_k=None, function_to_apply="none"):
        row = [0.0] * len(label_ids)
        for s in scores:
            row[label_ids[s["label"]]] = s["score"]
        rows.append(row)
    out[name] = {"auto": logits.tolist(), "pipeline": rows, "class": type(pipe.model).__name__}
    if remote:  # the encoder alone through AutoModel (embeddings), and the head on its mean-pooled states
        encoder = T.AutoModel.from_pretrained(repo, trust_remote_code=True, **kw).eval()
        batch = tokenizer(job["texts"], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out[name]["encoder"] = {"class": type(encoder).__name__, "logits": model.classifier(pooled).tolist()}
    if remote:  # without trust_remote_code stock transformers refuses, rather than load a head on a pooler
        try:
            T.AutoModelForSequenceClassification.from_pretrained(repo, **kw)
            out[name]["refused"] = False
        except ValueError as error:
            out[name]["refused"] = "trust_remote_code=True" in str(error)
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
"""


def word_tokenizer() -> T.PreTrainedTokenizerFast:
    """A word-level tokenizer whose ids fit the tiny models' vocabulary of 60."""
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", *WORDS.split()])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def logits(model: torch.nn.Module, tokenizer: T.PreTrainedTokenizerFast) -> list:
    with torch.no_grad():
        return model.eval()(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.tolist()


def save(model: torch.nn.Module, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def support(tokenizer) -> dict[str, torch.Tensor]:
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    return {**batch, "labels": torch.tensor(LABELS)}


def fine_tuned(tmp: Path, tokenizer, lp_ft: bool) -> Path:
    data = datasets.Dataset.from_dict({**tokenizer(TEXTS * 4), "labels": LABELS * 4})
    args = FineTuningConfig(output_dir=str(tmp), num_train_epochs=2, per_device_train_batch_size=4, use_cpu=True,
                            report_to="none", disable_tqdm=True, save_strategy="no", learning_rate=1e-2,
                            lp_ft=lp_ft, linear_probe="logistic")  # fmt: skip
    trainer = FineTuningTrainer(model=tiny_bert(), args=args, train_dataset=data,
                                data_collator=T.DataCollatorWithPadding(tokenizer))  # fmt: skip
    trainer.train()
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(tmp)
    return tmp


def publish(hub: HubServer, tmp: Path) -> dict[str, dict]:
    """Build and push every artifact; each job says how the child loads it and what the package predicts."""
    tok, jobs = word_tokenizer(), {}
    push = dict(token=TOKEN, endpoint=hub.url, backoff=0.01)

    for name, lp_ft in (("fine-tuned", False), ("lp-ft", True)):
        folder = fine_tuned(tmp / name, tok, lp_ft)
        push_folder(folder, f"tester/{name}", **push)
        model = T.AutoModelForSequenceClassification.from_pretrained(folder)
        jobs[name] = {"kind": "auto", "repo": f"tester/{name}", "expected": logits(model, tok)}

    train, _, collate = token_episodes()
    meta = tiny_bert()
    config = MetaTrainingConfig(output_dir=str(tmp / "meta"), algorithm="fomaml", inner_steps=1, inner_lr=0.3,
                                meta_batch_size=2, max_steps=2, learning_rate=1e-2, eval_steps=0, save_steps=0,
                                disable_tqdm=True)  # fmt: skip
    MetaTrainer(meta, config, train, collate).train()
    tok.save_pretrained(tmp / "meta")
    push_folder(tmp / "meta", "tester/meta-init", **push)
    jobs["meta-init"] = {"kind": "auto", "repo": "tester/meta-init", "expected": logits(meta, tok)}

    for name, init, algorithm in (("protonets", tiny_mean_pool(), ProtoNets()),
                                  ("fomaml", tiny_bert(), FOMAML(inner_steps=2, inner_lr=0.5))):  # fmt: skip
        algorithm.setup(init)
        push_folder(save(init, tok, tmp / f"{name}-init"), f"tester/{name}", **push)
        adapted = adapted_model(init, algorithm, support(tok))
        push_adapted(save(adapted, tok, tmp / f"{name}-adapted"), f"tester/{name}", "episode-0", **push)
        jobs[name] = {"kind": "auto", "repo": f"tester/{name}", "subfolder": "adapted/episode-0",
                      "trust_remote_code": name == "protonets", "expected": logits(adapted, tok)}  # fmt: skip

    push_folder(save(tiny_bert(), tok, tmp / "lora-init"), "tester/lora", **push)
    # Loaded from the Hub: the adapter's config names its base by the repo id, which the child loads.
    base = T.AutoModelForSequenceClassification.from_pretrained("tester/lora", token=TOKEN)
    lora = LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=2, init_lora_weights=False)
    peft_model = get_peft_model(base, lora).eval()
    algorithm = FOMAML(inner_steps=2, inner_lr=0.5, fast_weights="lora")
    algorithm.setup(peft_model)
    adapted = adapted_model(peft_model, algorithm, support(tok))
    adapted.save_pretrained(tmp / "lora-adapted")
    push_adapted(tmp / "lora-adapted", "tester/lora", "episode-0", **push)
    jobs["lora"] = {"kind": "lora", "repo": "tester/lora", "subfolder": "adapted/episode-0",
                    "expected": logits(adapted, tok)}  # fmt: skip

    push_folder(save(tiny_llama(), char_tokenizer(), tmp / "llama"), "tester/tiny-llama", **push)
    causal = add_lora(T.AutoModelForCausalLM.from_pretrained("tester/tiny-llama", token=TOKEN), r=2).eval()
    with torch.no_grad():
        for name, param in causal.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)  # a trained adapter, not the identity add_lora starts from
        ids = torch.tensor(LLAMA_IDS)
        expected = causal(input_ids=ids, attention_mask=(ids != 0).long()).logits.tolist()
    causal.save_pretrained(tmp / "translation-lora")
    push_folder(tmp / "translation-lora", "tester/translation-lora", **push)
    jobs["translation-lora"] = {"kind": "causal-lora", "repo": "tester/translation-lora", "ids": LLAMA_IDS,
                                "expected": expected}  # fmt: skip
    return jobs


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> Iterator[dict[str, dict]]:
    """Each artifact's job, with what the child process got from the Hub under ``got``."""
    tmp = tmp_path_factory.mktemp("stock")
    server = HubServer(tmp / "hub").start()
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            point_client_at(server.url, monkeypatch)
            jobs = publish(server, tmp)
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
               "HF_TOKEN": TOKEN, "HF_HOME": str(tmp / "child-home"), "OMP_NUM_THREADS": "1"}  # fmt: skip
        plan = {name: {k: v for k, v in job.items() if k != "expected"} for name, job in jobs.items()}
        for job in plan.values():
            job.setdefault("texts", TEXTS)
        result = tmp / "child.json"
        child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(plan), str(result)], env=env, cwd=tmp,
                               capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)  # fmt: skip
        assert child.returncode == 0, child.stderr[-4000:]
        got = json.loads(result.read_text())
        yield {name: {**job, "got": got[name]} for name, job in jobs.items()}
    finally:
        server.stop()


ARTIFACTS = ["fine-tuned", "lp-ft", "meta-init", "protonets", "fomaml", "lora", "translation-lora"]


@pytest.mark.parametrize("name", ARTIFACTS)
def test_artifact_loads_without_the_package_and_predicts_what_it_predicts(loaded, name):
    job = loaded[name]
    expected = torch.tensor(job["expected"])
    assert torch.allclose(torch.tensor(job["got"]["auto"]), expected, atol=1e-4), name
    if "pipeline" in job["got"]:
        assert torch.allclose(torch.tensor(job["got"]["pipeline"]), expected, atol=1e-4), name


def test_mean_pooled_head_is_custom_code_that_needs_trust_remote_code(loaded):
    got = loaded["protonets"]["got"]
    assert got["class"] == "MeanPoolBertForSequenceClassification" and got["refused"]
    assert got["encoder"]["class"] == "MeanPoolBertModel"  # AutoModel: the encoder, for embeddings
    expected = torch.tensor(loaded["protonets"]["expected"])
    assert torch.allclose(torch.tensor(got["encoder"]["logits"]), expected, atol=1e-4)
    assert loaded["fomaml"]["got"]["class"] == "BertForSequenceClassification"  # a stock head stays stock
