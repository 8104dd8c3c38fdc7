"""Issue 16 pieces the demo relies on: SFT validation keeps the best checkpoint, the eval stage scores held-out
text in bits/char with paired CIs, the report and the terminal table show them, and the demo recipe is sized
so no training example is truncated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hypnos.common.runner import load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures" / "train"


def _recipe(tmp_path: Path, stages: list[dict]) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "seed": 0, "stages": stages}, allow_unicode=True), encoding="utf-8")
    return p


def test_sft_validation_keeps_the_best_checkpoint(tmp_path, tiny_model_dir):
    """A learning rate that blows the loss up after the first quarter: the saved model is the early best one."""
    from safetensors.torch import load_file

    recipe = _recipe(tmp_path, [
        {"name": "sft", "kind": "sft", "model": str(tiny_model_dir), "data": [str(FIX / "qa.jsonl")],
         "validation": [str(FIX / "qa.jsonl")],
         "training": {"max_steps": 8, "per_device_train_batch_size": 4, "learning_rate": 3.0, "warmup_steps": 0,
                      "lr_scheduler_type": "constant"}}])
    r = load_recipe(recipe, output_dir=tmp_path / "runs")
    (m,) = run_recipe(r)
    curve = m["metrics"]["eval_loss_curve"]
    assert [s for s, _ in curve] == [2, 4, 6, 8], curve
    best_step, best = min(curve, key=lambda x: x[1])
    assert best_step < 8, f"the loss must rise after the best step for this test to mean anything: {curve}"
    assert m["metrics"]["best_step"] == best_step and m["metrics"]["best_eval_loss"] == pytest.approx(best, abs=1e-4)
    assert m["counts"]["validation"] == 12 and m["counts"]["validation_truncated"] == 0
    # the saved model is the best checkpoint's weights, not the last step's
    saved = load_file(r.stage_dir("sft") / "model" / "model.safetensors")
    ckpt = load_file(r.stage_dir("sft") / "checkpoints" / f"checkpoint-{best_step}" / "model.safetensors")
    k = "model.layers.0.self_attn.q_proj.weight"
    assert (saved[k] == ckpt[k]).all()


def test_eval_heldout_section_report_and_terminal_table(tmp_path, tiny_model_dir):
    """Held-out sets scored by every local model (plus extra models), pairs with CIs, in report and terminal."""
    from hypnos.eval.report import heldout_rows, summary_table

    shutil.copy(ROOT / "examples" / "heldout" / "online_qa.jsonl", tmp_path / "online.jsonl")
    recipe = _recipe(tmp_path, [
        {"name": "eval", "kind": "eval", "models": {"a": str(tiny_model_dir)}, "tasks": ["anesthesia_mcq"],
         "limit": 4, "contamination": False,
         "heldout": {"sets": {"online": "online.jsonl"}, "extra_models": {"b": str(tiny_model_dir)},
                     "pairs": [["a", "b"]], "max_texts": 6, "max_chars": 60}},
        {"name": "report", "kind": "report", "eval": "@eval"}])
    r = load_recipe(recipe, output_dir=tmp_path / "runs")
    run_recipe(r)
    res = json.loads((r.stage_dir("eval") / "results.json").read_text(encoding="utf-8"))
    h = res["heldout"]["online"]
    assert set(h["models"]) == {"a", "b"} and h["models"]["a"]["texts"] == 6
    assert h["settings"]["files"] == ["online.jsonl"]  # as the recipe names it, no machine path
    # the same model twice: identical bits, difference exactly 0 and a CI of [0, 0] (no "beats")
    assert h["models"]["a"]["bits_per_char"] == h["models"]["b"]["bits_per_char"]
    (p,) = h["pairs"]
    assert p["difference"] == 0 and p["ci"] == [0, 0] and not p["excludes_zero"]
    report = json.loads((r.stage_dir("report") / "report.json").read_text(encoding="utf-8"))
    cols, rows = summary_table(report)
    assert cols[0] == "held-out online (bits/char)" and set(rows) == {"a", "b"}
    assert rows["b"][1] == "–"  # an extra model has no task scores
    assert heldout_rows(report)[2][0]["verdict"] == "no difference shown"
    html = (r.stage_dir("report") / "report.html").read_text(encoding="utf-8")
    assert 'id="heldout-table"' in html and 'id="heldout-pairs"' in html
    assert "answer mode, fp32)" in html  # the scoring precision is stated (tests pin fp32)


def test_heldout_set_pools_several_files_and_names_a_missing_one(tmp_path, tiny_model_dir):
    """One held-out set may pool files (the demo's online register: two files written for the project)."""
    from hypnos.common.records import read_records
    from hypnos.common.stage import ConfigError

    files = [ROOT / "examples" / "heldout" / f for f in ("online_qa.jsonl", "online_qa2.jsonl")]
    n = sum(len(read_records(f)) for f in files)
    stage = {"name": "eval", "kind": "eval", "models": {"a": str(tiny_model_dir)}, "tasks": ["anesthesia_mcq"],
             "limit": 2, "contamination": False,
             "heldout": {"sets": {"online": [str(f) for f in files]}, "max_chars": 20}}
    r = load_recipe(_recipe(tmp_path, [stage]), output_dir=tmp_path / "runs")
    run_recipe(r)
    h = json.loads((r.stage_dir("eval") / "results.json").read_text(encoding="utf-8"))["heldout"]["online"]
    assert h["models"]["a"]["texts"] == n and h["settings"]["files"] == [str(f) for f in files]
    stage["heldout"]["sets"]["online"].append(str(tmp_path / "absent.jsonl"))
    with pytest.raises(ConfigError, match="absent.jsonl"):
        run_recipe(load_recipe(_recipe(tmp_path, [stage]), output_dir=tmp_path / "runs2"))


def test_heldout_pair_must_name_a_local_model(tmp_path, tiny_model_dir):
    from hypnos.common.stage import ConfigError

    recipe = _recipe(tmp_path, [
        {"name": "eval", "kind": "eval", "models": {"a": str(tiny_model_dir)}, "tasks": ["anesthesia_mcq"],
         "heldout": {"sets": {"x": str(FIX / "qa.jsonl")}, "pairs": [["a", "nope"]]}}])
    with pytest.raises(ConfigError, match="heldout pair label 'nope'"):
        run_recipe(load_recipe(recipe, output_dir=tmp_path / "runs"))


def test_demo_recipe_truncates_no_training_example():
    """max_length of every sft stage covers the longest chat of its files under the extended tokenizer's
    worst case, the base tokenizer's length halved (the extension cuts tokens/char by >= 1.7x)."""
    from transformers import AutoTokenizer

    from hypnos.common.models import resolve_model
    from hypnos.common.records import read_records
    from hypnos.train.sft import record_messages

    demo = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text(encoding="utf-8"))
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    longest = {}
    for f in ("examples/seeds/anesthesia_seed.jsonl", "examples/general/general_medical_qa.jsonl"):
        longest[f] = max(len(tok(tok.apply_chat_template(record_messages(rec), tokenize=False))["input_ids"])
                         for rec in read_records(ROOT / f))
    for st in demo["stages"]:
        if st.get("kind") == "sft":
            assert st["max_length"] >= max(longest.values()) / 1.7, (st["name"], longest)
            assert st.get("validation"), f"{st['name']}: no validation split"
