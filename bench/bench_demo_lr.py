"""How the demo's learning rates were chosen: validation loss of each SFT stage over a grid of learning rates.

Run (after a demo run wrote the stages these read): ``OMP_NUM_THREADS=2 .venv/bin/python bench/bench_demo_lr.py
[--run runs/demo] [--stages sft_specific_only sft_general] [--lrs 5e-5 2e-4 8e-4]``

Each point re-runs one SFT stage of recipes/demo.yaml with ``STAGE.training.learning_rate=LR`` (everything else
as in the recipe: steps, batch, LoRA or full fine-tuning, the validation split that picks the best checkpoint)
into ``runs/bench_demo_lr/lr<LR>/``, whose upstream stages are links to the demo run's, so the data, the
extended tokenizer and the warm-up are exactly the demo's. The validation loss is the stage's own (its
``validation:`` split, never trained on); ``sft_general_to_specific`` starts from the demo's own
``sft_general``. The table gives the loss at each quarter of the run and the best; the recipe uses the learning
rate with the lowest best loss, and ``max_steps`` is checked by whether that loss was still falling at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/demo.yaml"


def upstream(stage: str) -> list[str]:
    """The recipe's stages before ``stage`` (linked from the finished run, so only ``stage`` re-runs)."""
    sys.path.insert(0, str(ROOT / "src"))
    from hypnos.common.runner import load_recipe

    names = [s.name for s in load_recipe(RECIPE).stages]
    return names[: names.index(stage)]


def run_point(run: Path, out: Path, stage: str, lr: float) -> dict:
    """One stage at one learning rate; returns its manifest metrics (cached by the runner's manifests)."""
    demo = out / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    for up in upstream(stage):
        if not (demo / up).exists() and (run / up).exists():
            (demo / up).symlink_to((run / up).resolve(), target_is_directory=True)
    cmd = [str(Path(sys.executable).parent / "hypnos"), "run", str(RECIPE), "--only", stage,
           "--output-dir", str(out), f"{stage}.training.learning_rate={lr:g}"]
    env = {**os.environ, "HYPNOS_NO_PROGRESS": "1"}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    m = json.loads((demo / stage / "manifest.json").read_text(encoding="utf-8"))
    return {"seconds": m["timings"].get("seconds"), **{k: m["metrics"].get(k) for k in
            ("eval_loss_curve", "best_eval_loss", "best_step", "train_loss")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=ROOT / "runs/demo", help="a finished demo run (runs/<...>/demo)")
    p.add_argument("--out", type=Path, default=ROOT / "runs/bench_demo_lr")
    p.add_argument("--stages", nargs="+", default=["sft_specific_only", "sft_general_to_specific", "sft_general"])
    p.add_argument("--lrs", nargs="+", type=float, default=[5e-5, 2e-4, 8e-4])
    args = p.parse_args()
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
    for stage in args.stages:
        for lr in args.lrs:
            key = f"{stage}@{lr:g}"
            if key not in results:
                results[key] = run_point(args.run, args.out / f"lr{lr:g}", stage, lr)
                args.out.mkdir(parents=True, exist_ok=True)
                results_path.write_text(json.dumps(results, indent=1), encoding="utf-8")
            r = results[key]
            print(f"{key}: best {r['best_eval_loss']:.4f} at step {r['best_step']}  curve {r['eval_loss_curve']}  "
                  f"({r['seconds']:.0f} s)", flush=True)
    print("\n| stage | learning rate | validation loss at each quarter | best (step) | still falling at the end |")
    print("| --- | --- | --- | --- | --- |")
    for key, r in results.items():
        stage, lr = key.split("@")
        curve = r["eval_loss_curve"] or []
        falling = len(curve) > 1 and curve[-1][1] < curve[-2][1]
        print(f"| {stage} | {lr} | {' / '.join(f'{v:.3f}' for _, v in curve)} | {r['best_eval_loss']:.3f} "
              f"({r['best_step']}) | {'yes' if falling else 'no'} |")


if __name__ == "__main__":
    main()
