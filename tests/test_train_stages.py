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
    assert list((out / "llm_cache").iterdir()) and m["usage"]["strong"]["requests"] == len(original)


@pytest.mark.slow
def test_dpo_lora_and_rejection_sampling(tmp_path, eos_prone_dir):
    tiny_model_dir = eos_prone_dir
    r, (dpo, _reward, rs) = _run(tmp_path, [
        {"name": "dpo", "kind": "dpo", "model": str(tiny_model_dir), "data": [str(FIX / "ranked.jsonl")],
         "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "training": {"max_steps": 2, "max_length": 96, **FAST}},
        {"name": "reward", "kind": "reward", "model": str(tiny_model_dir), "data": [str(FIX / "ranked.jsonl")],
         "training": {"max_steps": 1, **FAST}},
        {"name": "rs", "kind": "rejection_sampling", "model": "@dpo", "reward_model": "@reward",
         "prompts": [str(FIX / "dialogue.jsonl")], "k": 3, "iterations": 2, "generate_batch_size": 4,
         "max_new_tokens": 8, "training": {"max_steps": 1, **FAST, "learning_rate": 1e-6}}])  # keeps its 2nd EOS
    assert dpo["counts"]["pairs"] == 11 and dpo["outputs"] == {"model": "model", "adapter": "adapter"}
    adapter = load_file(r.stage_dir("dpo") / "adapter" / "adapter_model.safetensors")
    assert all("lora_" in k for k in adapter)
    met = rs["metrics"]
    first = met["iterations"][0]
    assert len(met["iterations"]) == 2 and met["heldout_prompts"] == 1  # 10% of 4 prompts, at least one
    assert first["prompts"] == 3 and first["kept"] + sum(first["dropped"].values()) == 3 and first["kept"] >= 1
    assert met["mean_reward_before"] is not None and met["mean_reward_after"] is not None  # on the held-out prompt
    rs_dir = r.stage_dir("rs")
    samples = [json.loads(x) for x in (rs_dir / "iter0" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(samples) == 3 and all(len(s["answers"]) == 3 for s in samples)
    kept = [json.loads(x)["messages"][-1]["content"] for x in
            (rs_dir / "iter0" / "kept.jsonl").read_text(encoding="utf-8").splitlines()]
    cut = {a for s in samples for a, t in zip(s["answers"], s["truncated"]) if t}
    assert kept and not set(kept) & cut  # answers cut at max_new_tokens are never kept
    assert (rs_dir / "iter1" / "model" / "config.json").exists() and rs["outputs"]["model"] == "iter1/model"


def test_rejection_selection_floor_margin_and_truncation():
    from hypnos.train.rejection_sampling import select

    p = [[{"role": "user", "content": str(i)}] for i in range(4)]
    answers = [["a", "b", "c"]] * 4
    rewards = [[3.0, 1.0, 0.5], [3.0, 2.9, 0.0], [0.2, 0.1, 0.0], [9.0, 1.0, 0.0]]
    truncated = [[False] * 3, [False] * 3, [False] * 3, [True, False, False]]
    kept, dropped = select(p, answers, rewards, truncated, margin=0.5, floor=0.5)
    # 0: kept (3 >= floor, beats 1.0 by 2); 1: margin 0.1 too small; 2: best 0.2 below the floor;
    # 3: the 9.0 answer was cut, so "b" (1.0) is the best complete one and beats "c" by 1.0
    assert [c[-1]["content"] for c in kept] == ["a", "b"]
    assert dropped == {"best_not_above_margin": 1, "best_below_min_reward": 1}


def test_rewards_use_the_reward_models_own_chat_template(tmp_path, tiny_model_dir):
    """A stage's ``chat_template`` renders its policy's chats; the reward model scores chats rendered the way it
    was trained on them (its own saved template), else its scores mean nothing."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hypnos.train.rejection_sampling import reward_of

    torch.manual_seed(0)
    rm = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(rm)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.chat_template and "im_start" in tok.chat_template  # ChatML, as the reward stage trained with
    tok.save_pretrained(rm)
    prompts = [[{"role": "user", "content": "麻醉前禁食多久？"}]]
    answers = [["固体食物6小时。", "不用禁食。"]]
    own = reward_of(str(rm), prompts, answers)
    assert reward_of(str(rm), prompts, answers, chat_template="llama-2") == own
