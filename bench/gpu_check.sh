#!/usr/bin/env bash
# GPU check of the training and serving paths (issue 14), one short script: ≤ 8 minutes on one recent GPU.
#
#   bash bench/gpu_check.sh            # from the repo root, with .venv (or python) holding hypnos
#   GPU_CHECK_STEPS=20 bash bench/gpu_check.sh
#
# 1. SFT throughput in bf16: SmolLM2-135M (the built-in model) and a ~0.5B Llama built from a config (no hub
#    access), sdpa with padded rows, and flash-attention varlen (padding-free) when flash-attn is installed.
#    Prints tokens/s, MFU (6·N·tokens/s over the GPU's dense bf16 peak) and peak memory.
# 2. Single-process FSDP (accelerate, FSDP2) and DeepSpeed ZeRO-3 (if installed) save -> reload round trip:
#    the saved weights load with from_pretrained and equal a plain single-GPU run's (fp32, 2 steps).
# 3. `hypnos serve` throughput at concurrency 1, 8 and 32 (64 new tokens per request).
# Every section prints one line starting with RESULT; a section that cannot run prints SKIP and why.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
STEPS=${GPU_CHECK_STEPS:-12}
WORK=${GPU_CHECK_DIR:-$(mktemp -d -t hypnos_gpu_check.XXXX)}
export HF_HUB_OFFLINE=1 HYPNOS_NO_PROGRESS=1 TOKENIZERS_PARALLELISM=false
echo "== gpu_check: work dir $WORK, steps $STEPS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "SKIP: no nvidia-smi"; exit 1; }
$PY - <<'PY'
import importlib.util, torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__,
      "flash_attn", importlib.util.find_spec("flash_attn") is not None,
      "deepspeed", importlib.util.find_spec("deepspeed") is not None, "bf16", torch.cuda.is_bf16_supported())
PY

# ---- 1. SFT throughput ---------------------------------------------------------------------------------
timeout 300 $PY - "$STEPS" "$WORK" <<'PY'
import importlib.util, json, os, sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
from hypnos.common.models import prepare_builtin
from hypnos.train.common import load_tokenizer_for_training
from hypnos.train.packing import causal_lm_loss, make_collator

steps = int(sys.argv[1])
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}
name = torch.cuda.get_device_name()
peak = next((v for k, v in PEAK.items() if k in name), None)
smol = prepare_builtin("smollm2-135m-instruct")
tok = load_tokenizer_for_training(str(smol))
torch.manual_seed(0)
# Chats of 40-300 tokens (Chinese-medical-like lengths): random ids with a 40% prompt share.
lengths = torch.randint(40, 300, (4096,)).tolist()
examples = [{"input_ids": (ids := torch.randint(100, len(tok), (n,)).tolist()),
             "labels": [-100] * (n * 2 // 5) + ids[n * 2 // 5:]} for n in lengths]
half = dict(vocab_size=len(tok), hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            num_key_value_heads=16, tie_word_embeddings=True, max_position_embeddings=2048)
models = {"smollm2-135m": lambda attn: LlamaForCausalLM.from_pretrained(smol, dtype=torch.bfloat16, attn_implementation=attn),
          "llama-0.5b(cfg)": lambda attn: LlamaForCausalLM(LlamaConfig(**half, attn_implementation=attn)).to(torch.bfloat16)}
runs = [("sdpa", "padded")]
if importlib.util.find_spec("flash_attn"):
    runs += [("flash_attention_2", "padded"), ("flash_attention_2", "padding_free")]
else:
    print("SKIP flash-attention varlen: flash-attn not installed")
for mname, build in models.items():
    for attn, layout in runs:
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        model = build(attn).cuda()
        n_params = sum(p.numel() for p in model.parameters())
        coll = make_collator(layout, tok.pad_token_id, 2048)
        args = TrainingArguments(output_dir=f"{sys.argv[2]}/sft", max_steps=2 * steps, per_device_train_batch_size=32,
                                 learning_rate=1e-5, bf16=True, logging_steps=1, save_strategy="no", report_to=[],
                                 remove_unused_columns=False, disable_tqdm=True, train_sampling_strategy=
                                 "group_by_length" if layout == "padded" else "random")
        marks = {}

        class Clock(TrainerCallback):  # time the second half only: the first warms up kernels and the allocator
            def on_step_end(self, a, state, control, **kw):
                if state.global_step in (steps, 2 * steps):
                    torch.cuda.synchronize()
                    marks[state.global_step] = (time.perf_counter(), coll.tokens)

        tr = Trainer(model=model, args=args, train_dataset=examples, data_collator=coll,
                     compute_loss_func=causal_lm_loss, callbacks=[Clock()])
        tr.train()
        (t0, k0), (t1, k1) = marks[steps], marks[2 * steps]
        tps = (k1 - k0) / (t1 - t0)
        mfu = 6 * n_params * tps / peak if peak else float("nan")
        losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
        print("RESULT sft", json.dumps({"model": mname, "params_M": round(n_params / 1e6), "attn": attn, "layout": layout,
              "tokens_per_s": round(tps), "mfu": round(mfu, 3), "peak_mem_GB": round(torch.cuda.max_memory_allocated() / 2**30, 2),
              "last_loss": round(losses[-1], 4)}), flush=True)
        del model, tr
PY
echo "== sft section exit $?"

# ---- 2. FSDP / ZeRO-3 save -> reload round trip (one process) -------------------------------------------
timeout 180 $PY - "$WORK" <<'PY'
import sys, torch
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM
from hypnos.common.models import prepare_builtin
from hypnos.train.common import load_tokenizer_for_training
work = Path(sys.argv[1]); tiny = work / "tiny"
tok = load_tokenizer_for_training(str(prepare_builtin("smollm2-135m-instruct")))
torch.manual_seed(0)
LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(tiny)
tok.save_pretrained(tiny)
PY
cat > "$WORK/recipe.yaml" <<YAML
name: rt
stages:
  - {name: full, kind: sft, model: $WORK/tiny, data: [$PWD/tests/fixtures/train/qa.jsonl], dtype: float32,
     training: {max_steps: 2, per_device_train_batch_size: 4, learning_rate: 0.01, warmup_steps: 0, report_to: [], save_strategy: "no", bf16: false, train_sampling_strategy: sequential}}
  - {name: lora, kind: sft, model: $WORK/tiny, data: [$PWD/tests/fixtures/train/qa.jsonl], dtype: float32, lora: {r: 4, alpha: 8, dropout: 0.0},
     training: {max_steps: 2, per_device_train_batch_size: 4, learning_rate: 0.01, warmup_steps: 0, report_to: [], save_strategy: "no", bf16: false, train_sampling_strategy: sequential}}
YAML
timeout 120 $PY -m hypnos.cli run "$WORK/recipe.yaml" --output-dir "$WORK/plain" > "$WORK/plain.log" 2>&1 || echo "plain run failed: see $WORK/plain.log"
cat > "$WORK/fsdp.yaml" <<YAML
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config: {fsdp_version: 2, fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP, fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer,
              fsdp_state_dict_type: FULL_STATE_DICT, fsdp_reshard_after_forward: true, fsdp_cpu_ram_efficient_loading: false}
mixed_precision: 'no'
num_machines: 1
num_processes: 1
YAML
cat > "$WORK/zero3.yaml" <<YAML
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config: {zero_stage: 3, zero3_init_flag: false, zero3_save_16bit_model: true, gradient_accumulation_steps: 1, gradient_clipping: 1.0}
mixed_precision: 'no'
num_machines: 1
num_processes: 1
YAML
for kind in fsdp zero3; do
  if [ "$kind" = zero3 ] && ! $PY -c "import deepspeed" 2>/dev/null; then echo "SKIP zero3: deepspeed not installed"; continue; fi
  timeout 150 $PY -m accelerate.commands.launch --config_file "$WORK/$kind.yaml" -m hypnos.cli run "$WORK/recipe.yaml" \
      --output-dir "$WORK/$kind" > "$WORK/$kind.log" 2>&1 || { echo "RESULT roundtrip $kind FAILED (tail of $WORK/$kind.log):"; tail -20 "$WORK/$kind.log"; continue; }
  $PY - "$WORK" "$kind" <<'PY'
import json, sys
from pathlib import Path
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
work, kind = Path(sys.argv[1]), sys.argv[2]
base = load_file(work / "tiny" / "model.safetensors")
for stage in ("full", "lora"):
    a = load_file(work / "plain" / "rt" / stage / "model" / "model.safetensors")
    b = load_file(work / kind / "rt" / stage / "model" / "model.safetensors")
    AutoModelForCausalLM.from_pretrained(work / kind / "rt" / stage / "model")  # reloads without missing keys
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    moved = max((a[k].float() - base[k].float()).abs().max().item() for k in a)
    print("RESULT roundtrip", json.dumps({"kind": kind, "stage": stage, "same_keys": set(a) == set(b),
          "max_diff_vs_plain": diff, "moved_from_base": moved, "ok": set(a) == set(b) and diff < 1e-4 and moved > 1e-3}))
PY
done

# ---- 3. hypnos serve throughput --------------------------------------------------------------------------
PORT=${GPU_CHECK_PORT:-8765}
$PY -m hypnos.cli serve smollm2-135m-instruct --port "$PORT" --max-batch-rows 32 > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null && break; sleep 1; done
timeout 150 $PY - "$PORT" <<'PY'
import asyncio, json, sys, time
import httpx
url = f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions"
async def one(client, i):
    r = await client.post(url, json={"model": "smollm2-135m-instruct", "max_tokens": 64, "temperature": 0.7, "seed": i,
                                     "messages": [{"role": "user", "content": f"全麻术前需要禁食多久？请详细说明。({i})"}]})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]
async def level(c, n):
    async with httpx.AsyncClient(timeout=120) as client:
        sem = asyncio.Semaphore(c)
        async def guarded(i):
            async with sem:
                return await one(client, i)
        await one(client, -1)  # warm-up
        t0 = time.perf_counter()
        toks = await asyncio.gather(*(guarded(i) for i in range(n)))
        sec = time.perf_counter() - t0
    print("RESULT serve", json.dumps({"concurrency": c, "requests": n, "completion_tokens_per_s": round(sum(toks) / sec, 1),
                                      "requests_per_s": round(n / sec, 2)}), flush=True)
for c in (1, 8, 32):
    asyncio.run(level(c, max(8, 2 * c)))
PY
echo "== gpu_check done ($WORK)"
