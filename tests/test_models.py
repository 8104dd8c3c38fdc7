"""Model references: local dirs, the embedded SmolLM2 (converted once, verified by hash), hub ids offline."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest
import torch
from typer.testing import CliRunner

from hypnos.common import models
from hypnos.common.models import (
    BUILTIN_MODELS,
    MANIFEST,
    ModelNotFoundError,
    load_causal_lm,
    load_tokenizer,
    prepare_builtin,
    resolve_model,
)

CONVERSATION = [
    {"role": "system", "content": "你是一名麻醉科医生。"},
    {"role": "user", "content": "全麻术前为什么要禁食？"},
    {"role": "assistant", "content": "为了降低误吸的风险。"},
    {"role": "user", "content": "禁饮清水需要多久？"},
]


def test_local_dir_resolves_to_itself(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir


def test_unresolvable_refs_say_why(monkeypatch):
    with pytest.raises(ModelNotFoundError, match="not a hub id"):
        resolve_model("no-such-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="offline"):
        resolve_model("some-org/some-model")


def test_load_causal_lm_is_fp32_on_cpu(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir, device="cpu")
    assert model.dtype == torch.float32 and model.device.type == "cpu" and not model.training


def test_builtin_checkpoint_keeps_tokenizer_and_chat_template(smollm2_dir):
    from transformers import AutoTokenizer

    manifest = json.loads((smollm2_dir / MANIFEST).read_text())
    assert manifest["source_sha256"] == models._sha256(models.builtin_gguf_path("smollm2-135m-instruct"))
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())

    gguf = models.builtin_gguf_path("smollm2-135m-instruct")
    before = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    after = load_tokenizer("smollm2-135m-instruct")
    for gen in (True, False):
        text = before.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=gen)
        assert after.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=gen) == text
        assert text.startswith("<|im_start|>system\n你是一名麻醉科医生。<|im_end|>")
        assert after(text, add_special_tokens=False).input_ids == before(text, add_special_tokens=False).input_ids
    assert after.eos_token == "<|im_end|>"


@pytest.mark.slow
def test_builtin_weights_match_the_gguf(smollm2_dir):
    from transformers import AutoModelForCausalLM

    gguf = models.builtin_gguf_path("smollm2-135m-instruct")
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356]])
    with torch.no_grad():
        assert torch.allclose(load_causal_lm(smollm2_dir, device="cpu")(ids).logits, ref(ids).logits, atol=1e-5)


@pytest.fixture
def fake_conversion(smollm2_dir, tmp_path, monkeypatch):
    """A private cache whose "conversion" hard-links the shared checkpoint (fast) and counts calls."""
    monkeypatch.setenv("HYPNOS_CACHE", str(tmp_path))
    calls = []

    def convert(name, gguf, source_sha, out):
        calls.append(name)
        time.sleep(0.2)  # long enough for a second caller to hit the lock
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(smollm2_dir, out, copy_function=os.link)

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return calls


def test_prepare_converts_once_under_a_lock(fake_conversion, tmp_path):
    threads = [threading.Thread(target=prepare_builtin, args=("smollm2-135m-instruct",)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake_conversion == ["smollm2-135m-instruct"]
    models._verified.clear()  # as in a new process: verify by hashes
    assert prepare_builtin("smollm2-135m-instruct") == tmp_path / "models" / "smollm2-135m-instruct"
    assert len(fake_conversion) == 1


def test_prepare_rebuilds_a_corrupted_checkpoint(fake_conversion, tmp_path):
    out = prepare_builtin("smollm2-135m-instruct")
    config = out / "config.json"
    text = config.read_text()
    config.unlink()  # break the hard link before editing: the shared checkpoint must stay intact
    config.write_text(text.replace('"num_hidden_layers": 30', '"num_hidden_layers": 3'))
    prepare_builtin("smollm2-135m-instruct")
    assert len(fake_conversion) == 2


def test_models_cli_lists_builtins():
    from hypnos.common.models_cli import app

    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0 and all(name in result.output for name in BUILTIN_MODELS)
    result = CliRunner().invoke(app, ["prepare", "nope"])
    assert result.exit_code != 0
