"""pretrain, reward (with augmentation from a real server on loopback), dpo and rejection sampling stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hypnos.common.runner import load_recipe, run_recipe

FIX = Path(__file__).parent / "fixtures" / "train"
FAST = {"per_device_train_batch_size": 2, "learning_rate": 0.01, "warmup_steps": 0, "report_to": []}


def _run(tmp_path: Path, stages: list[dict], endpoints: dict | None = None):
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "endpoints": endpoints or {}, "stages": stages}, allow_unicode=True),
                 encoding="utf-8")
    r = load_recipe(p, output_dir=tmp_path / "runs")
    return r, run_recipe(r)


def test_pretrain_lora_trains_tied_embeddings(tmp_path, tiny_model_dir):
    r, (m,) = _run(tmp_path, [{
        "name": "pretrain", "kind": "pretrain", "model": str(tiny_model_dir),
        "data": [str(FIX / "corpus.jsonl"), str(FIX / "corpus.txt")], "block_size": 32, "train_embeddings": True,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "training": {"max_steps": 3, **FAST}}])
    assert m["counts"]["in"] == 12 and m["counts"]["blocks"] >= 12
    assert m["metrics"]["embeddings_trained"]
    out = r.stage_dir("pretrain")
    base, merged = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert not torch.equal(base["model.embed_tokens.weight"], merged["model.embed_tokens.weight"])
    assert torch.equal(base["model.norm.weight"], merged["model.norm.weight"])
    # tied model: the saved checkpoint still ties the head to the (trained) embeddings
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_reward_trains_on_all_pairs_and_reports_accuracy(tmp_path, tiny_model_dir):
    r, (m,) = _run(tmp_path, [{
        "name": "reward", "kind": "reward", "model": str(tiny_model_dir), "data": [str(FIX / "ranked.jsonl")],
        "eval_fraction": 0.25, "training": {"max_steps": 3, **FAST}}])
    assert m["counts"]["heldout_records"] == 2 and m["counts"]["train_records"] == 6
    met = m["metrics"]
    assert 0 <= met["heldout_accuracy_before"] <= 1 and 0 <= met["heldout_accuracy_after"] <= 1
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(r.stage_dir("reward") / "model")
    assert model.config.num_labels == 1
    base = load_file(tiny_model_dir / "model.safetensors")
    assert not torch.equal(model.model.norm.weight, base["model.norm.weight"])


def test_bradley_terry_loss_counts_every_ordered_pair():
    from types import SimpleNamespace

    from hypnos.train.reward import RankCollator, bradley_terry_loss

    batch = RankCollator(0)([{"responses": [[1, 2], [3], [4, 5, 6]]}, {"responses": [[7], [8]]}])
    assert batch["labels"].tolist() == [[0, 1], [0, 2], [1, 2], [3, 4]]
    rewards = torch.tensor([[2.0], [1.0], [0.0], [0.0], [1.0]])
    loss = bradley_terry_loss(SimpleNamespace(logits=rewards), batch["labels"])
    diffs = torch.tensor([1.0, 2.0, 1.0, -1.0])
    assert torch.isclose(loss, -torch.nn.functional.logsigmoid(diffs).mean())


def test_reward_augmentation_asks_real_endpoints(tmp_path, tiny_model_dir, serve_model):
    with serve_model(tiny_model_dir, name="tiny") as url:
        endpoints = {"strong": {"model": "tiny", "base_url": url}, "weak": {"model": "tiny", "base_url": url}}
        stage = {"name": "reward", "kind": "reward", "model": str(tiny_model_dir),
                 "data": [str(FIX / "ranked.jsonl")], "eval_fraction": 0,
                 "augment": {"stronger": "strong", "weaker": "weak", "max_tokens": 8, "seed": 1},
                 "training": {"max_steps": 1, **FAST}}
        r, (m,) = _run(tmp_path, [stage], endpoints)
    out = r.stage_dir("reward")
    original = [json.loads(x) for x in (FIX / "ranked.jsonl").read_text(encoding="utf-8").splitlines()]
    augmented = [json.loads(x) for x in (out / "ranked_augmented.jsonl").read_text(encoding="utf-8").splitlines()]
    assert m["outputs"]["data"] == "ranked_augmented.jsonl" and m["metrics"]["augment_failed"] == 0
    for a, o in zip(augmented, original):
        n = len(o["responses"])
        assert len(a["responses"]) == n + 2
        assert a["responses"][0] == o["responses"][0] and a["responses"][-1] == o["responses"][-1]
        assert a["labels"][1] == "stronger_llm" and a["labels"][-2] == "weaker_llm"
    assert (out / "llm_cache" / "strong.jsonl").exists() and m["usage"]["strong"]["requests"] == len(original)


@pytest.mark.slow
def test_dpo_lora_and_rejection_sampling(tmp_path, tiny_model_dir):
    r, (dpo, _reward, rs) = _run(tmp_path, [
        {"name": "dpo", "kind": "dpo", "model": str(tiny_model_dir), "data": [str(FIX / "ranked.jsonl")],
         "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "training": {"max_steps": 2, "max_length": 96, **FAST}},
        {"name": "reward", "kind": "reward", "model": str(tiny_model_dir), "data": [str(FIX / "ranked.jsonl")],
         "training": {"max_steps": 1, **FAST}},
        {"name": "rs", "kind": "rejection_sampling", "model": "@dpo", "reward_model": "@reward",
         "prompts": [str(FIX / "dialogue.jsonl")], "k": 3, "iterations": 2, "generate_batch_size": 4,
         "max_new_tokens": 8, "training": {"max_steps": 1, **FAST}}])
    assert dpo["counts"]["pairs"] == 11 and dpo["outputs"] == {"model": "model", "adapter": "adapter"}
    adapter = load_file(r.stage_dir("dpo") / "adapter" / "adapter_model.safetensors")
    assert all("lora_" in k for k in adapter)
    met = rs["metrics"]
    assert len(met["iterations"]) == 2 and met["iterations"][0]["kept"] == 4
    assert met["mean_reward_before"] is not None and met["mean_reward_after"] is not None
    assert met["iterations"][0]["mean_reward_kept"] >= met["iterations"][0]["mean_reward_sampled"]
    rs_dir = r.stage_dir("rs")
    samples = [json.loads(x) for x in (rs_dir / "iter0" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(samples) == 4 and all(len(s["answers"]) == 3 for s in samples)
    assert (rs_dir / "iter1" / "model" / "config.json").exists() and rs["outputs"]["model"] == "iter1/model"
