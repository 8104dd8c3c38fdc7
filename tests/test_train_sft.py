"""SFT stage: assistant-only labels, padding-free packing, LoRA/full, merge, the general→specific chain."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hypnos.common.runner import load_recipe, read_manifest, run_recipe

FIX = Path(__file__).parent / "fixtures" / "train"


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _write_recipe(tmp_path: Path, stages: list[dict], name: str = "t") -> Path:
    import yaml

    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump({"name": name, "seed": 0, "stages": stages}, allow_unicode=True), encoding="utf-8")
    return p


def _chats():
    return [[{"role": "user", "content": "问题" * k}, {"role": "assistant", "content": "回答内容" * (6 - k)}]
            for k in range(1, 6)]


def test_labels_cover_only_assistant_turns(tok):
    from hypnos.train.sft import tokenize_chat

    msgs = [{"role": "user", "content": "麻醉前禁食多久？"}, {"role": "assistant", "content": "固体食物6小时。"},
            {"role": "user", "content": "喝水呢？"}, {"role": "assistant", "content": "清饮料2小时。"}]
    ex = tokenize_chat(tok, msgs, 512)
    target = tok.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100])
    assert target == "固体食物6小时。<|im_end|>\n清饮料2小时。<|im_end|>\n"
    assert "喝水" not in target and "禁食" not in target


def test_packed_loss_equals_unpacked_loss(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hypnos.train.packing import PackedCollator, PaddedCollator, causal_lm_loss
    from hypnos.train.sft import tokenize_chat

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok))).eval()
    examples = [tokenize_chat(tok, c, 512) for c in _chats()]
    packed = PackedCollator()(examples)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    labels = packed.pop("labels")
    loss_packed = causal_lm_loss(model(**packed), labels)
    # reference: the model's own loss on a classic padded batch, full logits
    padded = PaddedCollator(tok.pad_token_id)(examples)
    padded.pop("logits_to_keep")
    loss_ref = model(**padded).loss
    assert abs(loss_packed.item() - loss_ref.item()) < 1e-5
    # attention stays inside each example: packed logits equal each example run alone
    packed.pop("logits_to_keep")
    logits = model(**packed).logits[0]
    start = 0
    for ex in examples:
        n = len(ex["input_ids"])
        alone = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
        assert torch.allclose(logits[start: start + n], alone, atol=1e-5)
        start += n


def test_general_to_specific_chain(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = _write_recipe(tmp_path, [
        {"name": "sft_general", "kind": "sft", "model": str(tiny_model_dir),
         "data": [str(FIX / "qa.jsonl"), str(FIX / "dialogue.jsonl")], "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
         "training": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 0.01, "warmup_steps": 0}},
        {"name": "sft_specific", "kind": "sft", "model": "@sft_general", "data": [str(FIX / "qa.jsonl")],
         "packing": False,
         "training": {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 0.01, "warmup_steps": 0}},
    ])
    r = load_recipe(recipe, output_dir=tmp_path / "runs")
    general, specific = run_recipe(r)
    assert general["outputs"] == {"model": "model", "adapter": "adapter"}
    assert general["counts"]["kept"] == 16 and general["metrics"]["tokens_per_s"] > 0
    assert len(general["metrics"]["loss_curve"]) == 3
    gdir, sdir = r.stage_dir("sft_general"), r.stage_dir("sft_specific")
    assert list((gdir / "checkpoints").glob("runs/*")), "no tensorboard logs"

    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(gdir / "model" / "model.safetensors")
    adapter = load_file(gdir / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter), "LoRA must not train base weights"
    assert torch.equal(merged["model.norm.weight"], base["model.norm.weight"])  # not adapted: untouched
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])

    # merged checkpoint reloads to the same logits as base + adapter
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), gdir / "adapter")
    reloaded = AutoModelForCausalLM.from_pretrained(gdir / "model")
    assert torch.allclose(with_adapter.eval()(ids).logits, reloaded.eval()(ids).logits, atol=1e-5)

    # full sft on top of the merged model: every kind of weight trains, norms included
    final = load_file(sdir / "model" / "model.safetensors")
    assert not torch.equal(final["model.norm.weight"], merged["model.norm.weight"])
    assert not (sdir / "adapter").exists()
    fp = specific["inputs"]["@sft_general"]  # keyed on the upstream output's bytes (runner)
    assert fp not in ("missing", None) and read_manifest(gdir)["status"] == "done"


def test_nan_loss_stops_the_stage_with_a_clear_message(tmp_path, tiny_model_dir):
    from hypnos.train.common import NonFiniteLossError

    recipe = _write_recipe(tmp_path, [
        {"name": "sft", "kind": "sft", "model": str(tiny_model_dir), "data": [str(FIX / "qa.jsonl")],
         "training": {"max_steps": 6, "per_device_train_batch_size": 4, "learning_rate": 1e38,
                      "warmup_steps": 0, "max_grad_norm": 0}}])
    r = load_recipe(recipe, output_dir=tmp_path / "runs")
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at step \d"):
        run_recipe(r)
    m = read_manifest(r.stage_dir("sft"))
    assert m["status"] == "failed" and "NonFiniteLossError" in m["error"]
    assert not (r.stage_dir("sft") / "model").exists()


def test_bad_row_and_bad_training_key_are_reported(tmp_path, tiny_model_dir):
    from hypnos.common.io import DataError
    from hypnos.common.stage import ConfigError

    bad = tmp_path / "bad.jsonl"
    bad.write_text((FIX / "qa.jsonl").read_text(encoding="utf-8") + '{"id": "x", "instruction": ""}\n',
                   encoding="utf-8")
    recipe = _write_recipe(tmp_path, [{"name": "sft", "kind": "sft", "model": str(tiny_model_dir),
                                       "data": [str(bad)], "training": {"max_steps": 1}}])
    with pytest.raises(DataError, match=r"bad.jsonl:13: instruction"):
        run_recipe(load_recipe(recipe, output_dir=tmp_path / "runs"))
    recipe = _write_recipe(tmp_path, [{"name": "sft", "kind": "sft", "model": str(tiny_model_dir),
                                       "data": [str(FIX / "qa.jsonl")], "training": {"max_stepz": 1}}])
    with pytest.raises(ConfigError, match="unknown TrainingArguments field.*max_stepz"):
        run_recipe(load_recipe(recipe, output_dir=tmp_path / "runs"))


def test_manifest_metrics_are_json(tmp_path, tiny_model_dir):
    recipe = _write_recipe(tmp_path, [{"name": "sft", "kind": "sft", "model": str(tiny_model_dir),
                                       "data": [str(FIX / "dialogue.jsonl")], "system": "你是麻醉科医生。",
                                       "training": {"max_steps": 1, "save_steps": 1}}])
    (m,) = run_recipe(load_recipe(recipe, output_dir=tmp_path / "runs"))
    json.dumps(m["metrics"])
    assert m["metrics"]["steps"] == 1 and m["counts"]["kept"] == 4


@pytest.mark.parametrize("flag", ["0", "1"])
def test_cpu_bf16_autocast_is_switched_by_the_hardware_flag(tmp_path, tiny_model_dir, monkeypatch, flag):
    """bf16 autocast on a CPU that multiplies bf16 (forced here either way): the stage trains, the manifest
    says which precision ran, and the checkpoint keeps fp32 weights (autocast, not bf16 weights)."""
    from hypnos.train.common import cpu_has_bf16, mixed_precision_bf16

    monkeypatch.setenv("HYPNOS_CPU_BF16", flag)
    assert cpu_has_bf16() is (flag == "1") and mixed_precision_bf16() is (flag == "1")
    recipe = _write_recipe(tmp_path, [{"name": "sft", "kind": "sft", "model": str(tiny_model_dir),
                                       "data": [str(FIX / "dialogue.jsonl")], "training": {"max_steps": 2}}])
    (m,) = run_recipe(load_recipe(recipe, output_dir=tmp_path / "runs"))
    assert m["metrics"]["mixed_precision"] == ("bf16" if flag == "1" else "no")
    assert all(math.isfinite(v) for _, v in m["metrics"]["loss_curve"])
    weights = load_file(tmp_path / "runs/t/sft/model/model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_cpu_bf16_flag_read_from_cpuinfo(monkeypatch):
    """Without the override the answer is the CPU's own flags (Linux), never a timing guess."""
    from hypnos.train.common import cpu_has_bf16

    monkeypatch.delenv("HYPNOS_CPU_BF16", raising=False)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        assert cpu_has_bf16() is False
        return
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")),
                 [])
    assert cpu_has_bf16() is bool({"avx512_bf16", "amx_bf16"} & set(flags))
