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


# ---- FSDP (emulated on CPU) and rank-aware stages ------------------------------------------------------

# accelerate only enables FSDP for GPU-like distributed types; on CPU/gloo the same FSDP2 code path
# (fully_shard per decoder layer, DTensor shards, accelerator.get_state_dict) runs once the state says FSDP.
FSDP_CPU_LAUNCHER = '''
import sys
import accelerate.state as S
from accelerate.utils import DistributedType

_init = S.AcceleratorState.__init__

def _init_fsdp_on_cpu(self, *a, **kw):
    _init(self, *a, **kw)
    if kw.get("fsdp_plugin") is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, kw["fsdp_plugin"]

S.AcceleratorState.__init__ = _init_fsdp_on_cpu
from hypnos.cli import main
sys.exit(main())
'''
DIST_TIMEOUT_S = 420  # a rank stuck in a collective (e.g. saving from rank 0 alone under FSDP) hangs, not fails
FSDP = {"fsdp": "full_shard auto_wrap", "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                                                        "state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True}}


def _recipe(path: Path, model: Path, batch: int, **extra) -> Path:
    train = {"max_steps": 2, "per_device_train_batch_size": batch, "learning_rate": 0.01, "warmup_steps": 0,
             "report_to": [], "save_strategy": "no", "train_sampling_strategy": "sequential", **extra}
    data = [str(FIX / "qa.jsonl")]
    stages = [{"name": "full", "kind": "sft", "model": str(model), "data": data, "training": train},
              {"name": "lora", "kind": "sft", "model": str(model), "data": data, "training": train,
               "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}]
    path.write_text(yaml.safe_dump({"name": "t", "stages": stages}), encoding="utf-8")
    return path


def test_fsdp_two_processes_save_the_trained_weights(tmp_path, tiny_model_dir):
    """2 processes under FSDP2 (gloo) save full and LoRA-merged models equal to one process's training."""
    one = _recipe(tmp_path / "one.yaml", tiny_model_dir, 4)
    two = _recipe(tmp_path / "two.yaml", tiny_model_dir, 2, **FSDP)
    launcher = tmp_path / "fsdp_cpu.py"
    launcher.write_text(FSDP_CPU_LAUNCHER, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "hypnos.cli", "run", str(one), "--output-dir", str(tmp_path / "r1")],
                   check=True, env=_env(), capture_output=True)
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(launcher), "run",
                           str(two), "--output-dir", str(tmp_path / "r2")],
                          env=_env(), capture_output=True, text=True, check=False, timeout=DIST_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "gathered from shards" in (tmp_path / "r2" / "t" / "run.log").read_text()
    base = load_file(tiny_model_dir / "model.safetensors")
    for stage in ("full", "lora"):
        w1 = load_file(tmp_path / "r1" / "t" / stage / "model" / "model.safetensors")
        w2 = load_file(tmp_path / "r2" / "t" / stage / "model" / "model.safetensors")
        assert set(w1) == set(w2)
        assert _max_diff(w1, base) > 1e-3, stage   # training moved the weights...
        assert _max_diff(w1, w2) < 1e-5, stage     # ...and the sharded run saved the same ones
    assert (tmp_path / "r2" / "t" / "lora" / "adapter" / "adapter_model.safetensors").exists()


COPY_STAGE_LAUNCHER = f'''
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from hypnos.stages import STAGES
STAGES["copy"] = "runner_stages"  # the runner tests' real data stage: appends rows, logs each one processed
from hypnos.cli import main
sys.exit(main())
'''


def test_two_processes_call_apis_and_write_manifests_once(tmp_path, tiny_model_dir):
    """A data stage, reward augmentation and endpoint rejection sampling under 2 processes: everything once."""
    from faulty_server import FaultyServer

    ranked = [json.loads(x) for x in (FIX / "ranked.jsonl").read_text(encoding="utf-8").splitlines()]
    fast = {"max_steps": 1, "per_device_train_batch_size": 2, "report_to": [], "save_strategy": "no"}
    with FaultyServer() as server:
        endpoints = {"strong": {"model": "s", "base_url": server.base_url},
                     "weak": {"model": "w", "base_url": server.base_url}}
        stages = [{"name": "copy", "kind": "copy", "source": str(FIX / "qa.jsonl")},
                  {"name": "reward", "kind": "reward", "model": str(tiny_model_dir), "data": [str(FIX / "ranked.jsonl")],
                   "eval_fraction": 0, "augment": {"stronger": "strong", "weaker": "weak", "max_tokens": 8},
                   "training": fast},
                  {"name": "rs", "kind": "rejection_sampling", "model": str(tiny_model_dir), "reward_model": "@reward",
                   "prompts": [str(FIX / "ranked.jsonl")], "k": 2, "endpoint": "strong", "heldout_fraction": 0.25,
                   "max_new_tokens": 4, "training": fast}]
        recipe = tmp_path / "r.yaml"
        recipe.write_text(yaml.safe_dump({"name": "t", "endpoints": endpoints, "stages": stages}, allow_unicode=True),
                          encoding="utf-8")
        launcher = tmp_path / "with_copy_stage.py"
        launcher.write_text(COPY_STAGE_LAUNCHER, encoding="utf-8")
        proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(launcher),
                               "run", str(recipe), "--output-dir", str(tmp_path / "runs")],
                              env=_env(), capture_output=True, text=True, check=False, timeout=DIST_TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr[-4000:]
        held = 2  # 25% of 8 prompts
        assert server.requests == 2 * len(ranked) + 2 * (len(ranked) - held)  # augmentation + k=2 samples
        assert max(server.counts.values()) <= 2 + 2  # a question: strong + weak + 2 samples at most, never doubled
    run_dir = tmp_path / "runs" / "t"
    # every process logs to its own stderr, which torchrun passes through (run.log holds the main process's only,
    # so counting there could not see another rank writing a manifest)
    writes = [line for line in proc.stderr.splitlines() if "manifest" in line and "written" in line]
    assert len(writes) == 6 and len({w.split("by pid ")[1] for w in writes}) == 1  # running + done, per stage
    processed = (run_dir / "copy" / "processed.log").read_text().splitlines()
    assert sorted(processed) == sorted({json.loads(x)["id"] for x in (FIX / "qa.jsonl").read_text().splitlines()})
    usage = json.loads((run_dir / "reward" / "manifest.json").read_text())["usage"]
    assert usage["strong"]["http_requests"] == usage["weak"]["http_requests"] == len(ranked)
    assert list((run_dir / "reward" / "llm_cache").iterdir())  # answers cached for a resume
    m = json.loads((run_dir / "rs" / "manifest.json").read_text())
    assert m["counts"]["heldout"] == held and m["metrics"]["mean_reward_after"] is not None
    samples = (run_dir / "rs" / "iter0" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == len(ranked) - held
