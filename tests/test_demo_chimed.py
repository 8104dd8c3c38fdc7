"""recipes/demo_chimed.yaml end to end at a tiny size: pretrain -> SFT -> reward (rankings augmented through the
local endpoint, a real `hypnos serve`) -> rejection sampling -> eval -> report with the held-out figures."""

from __future__ import annotations

import json
from pathlib import Path

from hypnos.common.runner import load_recipe, run_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo_chimed.yaml"
RANKED = Path(__file__).parent / "fixtures" / "train" / "ranked.jsonl"  # 8 rankings: 8 endpoint calls, not 44


def test_demo_chimed_runs_end_to_end_at_tiny_size(tmp_path, eos_prone_dir):
    tiny = str(eos_prone_dir)
    steps = {"max_steps": 1, "per_device_train_batch_size": 2, "warmup_steps": 0}  # warm-up: a step at lr 0
    overrides = [
        f"pretrain.model={tiny}", f"pretrain.training={json.dumps(steps)}", "pretrain.block_size=64",
        f"sft.training={json.dumps(steps)}", "sft.max_length=256",
        f"reward.training={json.dumps(steps)}", f"reward.data={json.dumps([str(RANKED)])}", "reward.max_length=128", "reward.augment.max_tokens=8",
        'rs_prompts.sources=[{path: "@anesthesia_split.train", name: seeds, cap: 8}]',
        f"rejection_sampling.training={json.dumps(steps)}", "rejection_sampling.k=2",
        "rejection_sampling.max_new_tokens=8", "rejection_sampling.max_length=256",
        f"eval.models={json.dumps({'base': tiny, 'chimed_sft': '@sft', 'chimed_rs': '@rejection_sampling'})}",
        "eval.limit=3", "eval.max_new_tokens=8", "eval.heldout.max_texts=4", "eval.heldout.max_chars=40",
    ]
    r = load_recipe(RECIPE, overrides, output_dir=tmp_path / "runs")
    manifests = {m["stage"]: m for m in run_recipe(r)}
    assert all(m["status"] == "done" for m in manifests.values())

    reward = manifests["reward"]
    assert reward["counts"]["heldout_records"] >= 1
    # every ranking gained the local endpoint's answer (a real server answered, through the client's cache)
    assert reward["metrics"]["augment_failed"] == 0
    before = [len(json.loads(x)["responses"]) for x in RANKED.read_text(encoding="utf-8").splitlines() if x.strip()]
    aug = r.stage_dir("reward") / reward["outputs"]["data"]
    after = [len(json.loads(x)["responses"]) for x in aug.read_text(encoding="utf-8").splitlines() if x.strip()]
    assert after == [n + 1 for n in before]
    rs = manifests["rejection_sampling"]
    assert rs["counts"]["heldout"] == 3 and {"mean_reward_before", "mean_reward_after"} <= set(rs["metrics"])  # 40% of 8
    first = rs["metrics"]["iterations"][0]  # keep_truncated: every prompt keeps its best answer, cut or not
    assert first["kept"] == first["prompts"] == 5 and first["kept_truncated"] <= first["kept"]

    report = json.loads((r.stage_dir("report") / "report.json").read_text(encoding="utf-8"))
    rows = {row["stage"]: row for row in report["preference"]}
    assert rows["reward"]["after"] == reward["metrics"]["heldout_accuracy_after"]
    assert rows["rejection_sampling"]["before"] == rs["metrics"]["mean_reward_before"]
    # each before/after comes with after − before and a paired 95% CI over the held-out rankings / prompts
    assert rows["reward"]["difference"] == reward["metrics"]["heldout_accuracy_change"]["difference"]
    assert rows["rejection_sampling"]["ci"] == rs["metrics"]["mean_reward_change"]["ci"]
    assert all(len(row["ci"]) == 2 and row["ci"][0] <= row["difference"] <= row["ci"][1] for row in rows.values())
    assert set(report["heldout"]) == {"anesthesia", "online"}
    assert set(report["heldout"]["online"]["models"]) == {"base", "chimed_sft", "chimed_rs"}
    # every stage trained: each model reads the held-out text differently from the one before it
    per_text = json.loads((r.stage_dir("eval") / "heldout" / "online.json").read_text(encoding="utf-8"))["per_text"]
    assert per_text["base"] != per_text["chimed_sft"] != per_text["chimed_rs"]
    html = (r.stage_dir("report") / "report.html").read_text(encoding="utf-8")
    assert 'id="preference-table"' in html and "pairwise accuracy on held-out rankings" in html
    assert "after − before [95% CI]" in html
    # ...and the summary `hypnos run` prints at the end
    import io

    from rich.console import Console

    from hypnos.cli import _results_table

    buf = io.StringIO()
    _results_table(Console(file=buf, width=400), r.stage_dir("report") / "report.json")
    lines = {line.split(":")[0]: line for line in buf.getvalue().splitlines() if ": " in line}
    lo, hi = rows["reward"]["ci"]
    assert f"after − before {rows['reward']['difference']:+.3f}, paired 95% CI [{lo:+.3f}, {hi:+.3f}]" in lines["reward"]
    assert "paired 95% CI" in lines["rejection_sampling"]
