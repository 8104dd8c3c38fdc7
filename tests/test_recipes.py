"""Every shipped recipe and config validates (torchtune's test_configs): keys, references, files, endpoints."""

import json
from pathlib import Path

import pytest

from hypnos.common.runner import load_recipe, validate_recipe

ROOT = Path(__file__).resolve().parents[1]

# What the paper recipes expect under $HYPNOS_DATA: tiny stand-ins of the right kind.
QA = {"id": "x", "instruction": "麻醉前评估包括哪些内容？", "output": "病史、体格检查、气道评估。"}
PAPER_DATA = {
    "anesthesia_qa_24k.jsonl": QA, "general_medical_8m.jsonl": QA, "chimed_qa.jsonl": QA, "cmd_sft.jsonl": QA,
    "meddialog.jsonl": QA, "safety_prompts.jsonl": QA, "rs_prompts.jsonl": QA,
    "medical_corpus.jsonl": {"id": "t", "text": "丙泊酚是常用的静脉麻醉药。"},
    "cmd_pretrain.jsonl": {"id": "t", "text": "丙泊酚是常用的静脉麻醉药。"},
    "cmd_reward.jsonl": {"id": "r", "question": "问", "responses": ["好", "差"]},
    "anecq_private.jsonl": {"id": "m", "question": "问", "options": {"A": "1", "B": "2"}, "answer": "A"},
}


def test_demo_recipe_validates(tmp_path):
    r = load_recipe(ROOT / "recipes/demo.yaml", output_dir=tmp_path)
    assert validate_recipe(r) == []
    kinds = [s.kind for s in r.stages]
    for k in ("generate", "crossfilter", "dedup", "decontaminate", "tokenizer", "sft", "eval", "report"):
        assert k in kinds


@pytest.mark.parametrize("name", ["hypnos", "chimed"])
def test_paper_recipes_validate(name, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for fname, row in PAPER_DATA.items():
        (data / fname).write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (data / "hospitals.txt").write_text("某某市第一人民医院\n", encoding="utf-8")
    monkeypatch.setenv("HYPNOS_DATA", str(data))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-used")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # hub ids are valid references for users with network
    r = load_recipe(ROOT / f"recipes/{name}.yaml", output_dir=tmp_path / "runs")
    assert validate_recipe(r) == []


def test_paper_recipe_without_data_or_keys_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPNOS_DATA", str(tmp_path / "nothing"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    problems = "\n".join(validate_recipe(load_recipe(ROOT / "recipes/hypnos.yaml", output_dir=tmp_path)))
    assert "OPENAI_API_KEY" in problems and "anesthesia_qa_24k.jsonl" in problems and "file not found" in problems


def test_exponent_floats_are_numbers_in_recipes_and_overrides(tmp_path):
    """``learning_rate: 1e-4`` (no dot) is a number, as in YAML 1.2, not PyYAML's string "1e-4" that failed
    deep inside the trainer; quoted it stays a string."""
    p = tmp_path / "r.yaml"
    p.write_text("name: t\nstages:\n  - {name: sft, kind: sft, model: m, data: [d.jsonl],\n"
                 "     training: {learning_rate: 1e-4, weight_decay: 2E-2, max_steps: 10}}\n"
                 "  - {name: mix, kind: mix, sources: [{path: d.jsonl, name: '1e3'}]}\n", encoding="utf-8")
    r = load_recipe(p, overrides=["sft.training.warmup_ratio=5e-2"], output_dir=tmp_path)
    training = r.stage("sft").config.training
    assert training == {"learning_rate": 1e-4, "weight_decay": 0.02, "max_steps": 10, "warmup_ratio": 0.05}
    assert all(type(v) in (float, int) for v in training.values())
    assert r.stage("mix").config.sources[0].name == "1e3"
