"""Scale-out and robustness: 2-process data parallel on CPU matches one process; SIGKILL + resume matches a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

FIX = Path(__file__).parent / "fixtures" / "train"
VENV_BIN = Path(sys.executable).parent


def _config(path: Path, model: Path, **training) -> Path:
    cfg = {"model": str(model), "data": [str(FIX / "qa.jsonl"), str(FIX / "dialogue.jsonl")],
           "training": {"learning_rate": 0.001, "warmup_steps": 0, "report_to": [], **training}}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _env() -> dict:
    return {**os.environ, "HYPNOS_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _weights(run_dir: Path) -> dict:
    return load_file(run_dir / "sft" / "sft" / "model" / "model.safetensors")


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "sft" / "sft" / "manifest.json").read_text())


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(tmp_path, tiny_model_dir):
    one = _config(tmp_path / "one.yaml", tiny_model_dir, max_steps=3, per_device_train_batch_size=4)
    two = _config(tmp_path / "two.yaml", tiny_model_dir, max_steps=3, per_device_train_batch_size=2)
    subprocess.run([sys.executable, "-m", "hypnos.cli", "sft", "--config", str(one), "--output-dir",
                    str(tmp_path / "r1")], check=True, env=_env(), capture_output=True)
    # torchrun, not `accelerate launch --cpu` (which silently runs one process; see STACK.md)
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "hypnos.cli",
                           "sft", "--config", str(two), "--output-dir", str(tmp_path / "r2")],
                          env=_env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w1, w2, base = _weights(tmp_path / "r1"), _weights(tmp_path / "r2"), load_file(tiny_model_dir / "model.safetensors")
    assert _max_diff(w1, base) > 1e-3  # training moved the weights...
    assert _max_diff(w1, w2) < 1e-5    # ...identically with the global batch split over 2 processes
    c1, c2 = _manifest(tmp_path / "r1")["metrics"]["loss_curve"], _manifest(tmp_path / "r2")["metrics"]["loss_curve"]
    assert [s for s, _ in c1] == [s for s, _ in c2]
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(c1, c2))


@pytest.mark.slow
def test_sigkill_then_resume_ends_at_the_same_weights(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path / "c.yaml", tiny_model_dir, max_steps=24, per_device_train_batch_size=2, save_steps=4,
                  save_total_limit=2)
    cmd = [sys.executable, "-m", "hypnos.cli", "sft", "--config", str(cfg), "--output-dir"]
    subprocess.run(cmd + [str(tmp_path / "clean")], check=True, env=_env(), capture_output=True)

    killed = tmp_path / "killed"
    ckpts = killed / "sft" / "sft" / "checkpoints"
    proc = subprocess.Popen(cmd + [str(killed)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts / "checkpoint-8" / "trainer_state.json").exists():
        if proc.poll() is not None:
            pytest.fail("the training run ended before it could be killed")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _manifest(killed)["status"] == "running"
    assert not (killed / "sft" / "sft" / "model").exists()

    subprocess.run(cmd + [str(killed)], check=True, env=_env(), capture_output=True)
    resumed = _manifest(killed)
    assert resumed["status"] == "done" and resumed["resumed"]
    assert resumed["metrics"]["resumed_from"].startswith("checkpoint-")
    assert int(resumed["metrics"]["resumed_from"].split("-")[1]) >= 8
    assert _max_diff(_weights(tmp_path / "clean"), _weights(killed)) < 1e-6
    clean_curve = dict(_manifest(tmp_path / "clean")["metrics"]["loss_curve"])
    assert abs(clean_curve[24] - resumed["metrics"]["loss_curve"][-1][1]) < 1e-5
