"""Chat templates for template-less bases, batch layouts without a micro-batch-wide mask, cached tokenization."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml

from hypnos.common.runner import load_recipe, read_manifest, run_recipe, validate_recipe

FIX = Path(__file__).parent / "fixtures" / "train"
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HYPNOS_DATA") or ROOT.parent / "shared" / "data")
LLAMA2_TOK = DATA / "tokenizers" / "chinese_llama2_alpaca2"
CHAT = [{"role": "system", "content": "你是麻醉科医生。"}, {"role": "user", "content": "麻醉前禁食多久？"},
        {"role": "assistant", "content": "固体食物6小时。"}, {"role": "user", "content": "喝水呢？"},
        {"role": "assistant", "content": "清饮料2小时。"}]


@pytest.fixture(scope="module")
def smol_tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def llama_tok():
    """The Chinese-LLaMA-2 SentencePiece tokenizer: a Llama-2 base without a chat template."""
    if not (LLAMA2_TOK / "tokenizer.model").exists():
        pytest.skip(f"needs the shared tokenizers ({LLAMA2_TOK}); set HYPNOS_DATA")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(LLAMA2_TOK)
    assert not tok.chat_template
    return tok


@pytest.fixture(scope="module")
def templateless_dir(tmp_path_factory, llama_tok):
    """A tiny random Llama with the template-less Llama-2-style tokenizer (stands in for Llama-2-7B)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama2-like")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(llama_tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, bos_token_id=llama_tok.bos_token_id,
                                 eos_token_id=llama_tok.eos_token_id)).save_pretrained(out)
    llama_tok.save_pretrained(out)
    return out


# ---- chat templates ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["chatml", "llama-2", "ziya"])
@pytest.mark.parametrize("which", ["llama", "smol"])
def test_named_templates_label_exactly_the_answers(name, which, llama_tok, smol_tok):
    from hypnos.train.chat_templates import resolve_chat_template
    from hypnos.train.sft import tokenize_chat

    tok = copy.deepcopy({"llama": llama_tok, "smol": smol_tok}[which])  # the fixtures stay template-less
    tok.chat_template = resolve_chat_template(name)
    ex = tokenize_chat(tok, CHAT, 512)
    target = tok.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100])
    assert "固体食物6小时。" in target and "清饮料2小时。" in target
    assert "禁食" not in target and "喝水" not in target and "麻醉科" not in target
    assert target.count(tok.eos_token) == 2  # the model learns to stop
    if name == "chatml":
        assert target.count("<|im_end|>") == 2
    rendered = tok.apply_chat_template(CHAT, tokenize=False)
    if name == "ziya":
        assert "<human>:麻醉前禁食多久？\n<bot>:固体食物6小时。" in rendered
    if name == "llama-2":
        assert rendered.startswith(tok.bos_token + "[INST] <<SYS>>\n你是麻醉科医生。\n<</SYS>>\n\n麻醉前禁食多久？ [/INST] 固体")


def test_validate_refuses_a_templateless_base_until_chat_template_is_named(tmp_path, templateless_dir):
    def recipe(extra: dict) -> list[str]:
        stages = [{"name": "sft", "kind": "sft", "model": str(templateless_dir), "data": [str(FIX / "qa.jsonl")],
                   **extra},
                  {"name": "dpo", "kind": "dpo", "model": "@sft", "data": [str(FIX / "ranked.jsonl")]}]
        p = tmp_path / "r.yaml"
        p.write_text(yaml.safe_dump({"name": "t", "stages": stages}), encoding="utf-8")
        return validate_recipe(load_recipe(p, output_dir=tmp_path / "runs"))

    problems = recipe({})
    assert len(problems) == 2 and all("has no chat template" in p and "chat_template" in p for p in problems)
    assert recipe({"chat_template": "llama-2"}) == []  # the dpo stage inherits it through "@sft"
    assert "unknown name 'llama2'" in "\n".join(recipe({"chat_template": "llama2"}))
    assert recipe({"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}) == []


def test_validate_refuses_a_templateless_reward_model_in_rejection_sampling(tmp_path, tiny_model_dir, templateless_dir):
    """Rewards are computed after all the sampling: a reward model that cannot render chats must be caught first."""
    def problems(extra: dict) -> list[str]:
        stage = {"name": "rs", "kind": "rejection_sampling", "model": str(tiny_model_dir),
                 "reward_model": str(templateless_dir), "prompts": [str(FIX / "ranked.jsonl")], **extra}
        p = tmp_path / "rs.yaml"
        p.write_text(yaml.safe_dump({"name": "t", "stages": [stage]}), encoding="utf-8")
        return validate_recipe(load_recipe(p, output_dir=tmp_path / "runs"))

    found = problems({})
    assert len(found) == 1 and "reward_model" in found[0] and "chat_template" in found[0], found
    assert problems({"chat_template": "chatml"}) == []  # used for the reward model when it has none


@pytest.mark.parametrize("name,base_keys", [("hypnos", ["tokenizer.base_model"]), ("chimed", ["pretrain.model"])])
def test_paper_recipes_name_templates_for_templateless_bases(name, base_keys, tmp_path, monkeypatch,
                                                             templateless_dir):
    from test_recipes import PAPER_DATA

    data = tmp_path / "data"
    data.mkdir()
    for fname, row in PAPER_DATA.items():
        (data / fname).write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (data / "hospitals.txt").write_text("某某市第一人民医院\n", encoding="utf-8")
    for k, v in {"HYPNOS_DATA": str(data), "OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "x", "HF_HUB_OFFLINE": "0"}.items():
        monkeypatch.setenv(k, v)
    over = [f"{k}={templateless_dir}" for k in base_keys]
    r = load_recipe(ROOT / f"recipes/{name}.yaml", overrides=over, output_dir=tmp_path / "runs")
    assert validate_recipe(r) == []
    from hypnos.train.common import TrainStageConfig

    trained = [s.name for s in r.stages if isinstance(s.config, TrainStageConfig) and s.config.chat_template]
    assert trained, "the paper recipe names no chat_template"
    cleared = over + [f"{s}.chat_template=null" for s in trained]
    problems = validate_recipe(load_recipe(ROOT / f"recipes/{name}.yaml", overrides=cleared, output_dir=tmp_path / "r2"))
    assert problems and all("chat_template" in p for p in problems)


# ---- batch layouts ------------------------------------------------------------------------------------

def _examples(tok):
    from hypnos.train.sft import tokenize_chat

    chats = [[{"role": "user", "content": "问题" * k}, {"role": "assistant", "content": "回答内容" * (9 - k)}]
             for k in range(1, 9)]
    return [tokenize_chat(tok, c, 512) for c in chats]


@pytest.mark.parametrize("which", ["smol", "llama"])
def test_layouts_give_the_padded_loss_without_a_micro_batch_wide_mask(which, request, monkeypatch):
    """Both tokenizer families, each with its chat formatting (SmolLM2's ChatML; Llama-2's [INST] named for the
    template-less SentencePiece base, loaded as a training stage loads it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hypnos.train.common import load_tokenizer_for_training
    from hypnos.train.packing import (
        PaddedCollator,
        RowPackedCollator,
        causal_lm_loss,
        choose_layout,
        make_collator,
    )

    if which == "smol":
        smol_tok = request.getfixturevalue("smol_tok")
    else:
        smol_tok = load_tokenizer_for_training(str(request.getfixturevalue("templateless_dir")), "llama-2")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=len(smol_tok),
                                         attn_implementation="sdpa")).eval()
    examples = _examples(smol_tok)
    total = sum(len(e["input_ids"]) for e in examples)
    budget = 2 * max(len(e["input_ids"]) for e in examples)
    masks: list[tuple] = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kw):  # records what attention is handed, then runs the real kernel
        masks.append(None if attn_mask is None else tuple(attn_mask.shape))
        return real_sdpa(*args, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    padded = PaddedCollator(smol_tok.pad_token_id)(examples)
    padded.pop("logits_to_keep")
    reference = model(**padded).loss  # the model's own loss, full logits
    batch = RowPackedCollator(smol_tok.pad_token_id, budget)(examples)
    assert batch["input_ids"].shape[0] < len(examples) and batch["input_ids"].shape[1] <= budget
    masks.clear()
    labels = batch.pop("labels")
    loss = causal_lm_loss(model(**batch), labels)
    assert abs(loss.item() - reference.item()) < 1e-5
    assert masks and all(m is None or m[-1] <= budget < total for m in masks)  # never (total tokens)²
    # under sdpa the one-row padding-free layout would need a total×total mask: refused
    with pytest.raises(ValueError, match="flash_attention"):
        choose_layout("padding_free", "sdpa")
    assert choose_layout("auto", "sdpa") == "padded" and choose_layout(True, "flash_attention_2") == "padding_free"
    assert make_collator("padding_free", 0, 0).__class__.__name__ == "PaddingFreeCollator"


def test_pack_rows_respects_the_budget():
    from hypnos.train.packing import pack_rows

    assert pack_rows([5, 4, 3, 2, 9], 9) == [[0, 1], [2, 3], [4]]
    assert pack_rows([12], 9) == [[0]]


# ---- tokenization cache and precision ------------------------------------------------------------------

def test_resumed_run_reuses_the_tokenized_cache(tmp_path, tiny_model_dir, caplog):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "stages": [{
        "name": "sft", "kind": "sft", "model": str(tiny_model_dir), "data": [str(FIX / "qa.jsonl")],
        "training": {"max_steps": 1, "per_device_train_batch_size": 4, "report_to": [], "save_strategy": "no"}}]}),
        encoding="utf-8")
    r = load_recipe(p, output_dir=tmp_path / "runs")
    with caplog.at_level(logging.INFO, logger="hypnos"):
        (m,) = run_recipe(r)
    assert "tokenize: cache miss" in caplog.text and "cache hit" not in caplog.text
    assert m["metrics"]["dtype"] == "torch.float32" and m["metrics"]["layout"] == "padded"
    cached = sorted((r.stage_dir("sft") / "tokenized").glob("chats-*.arrow"))
    assert cached
    stamps = [f.stat().st_mtime_ns for f in cached]
    # a run killed after tokenizing: same fingerprint, not done -> resumed in the same folder
    manifest = read_manifest(r.stage_dir("sft"))
    manifest["status"] = "running"
    (r.stage_dir("sft") / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hypnos"):
        (m2,) = run_recipe(r)
    assert m2["resumed"] and "tokenize: cache hit" in caplog.text and "cache miss" not in caplog.text
    assert [f.stat().st_mtime_ns for f in cached] == stamps  # read, not written again
    assert m2["counts"] == m["counts"]


def test_weights_train_and_save_in_the_requested_dtype(tmp_path, tiny_model_dir):
    from safetensors import safe_open

    from hypnos.train.common import training_dtype

    assert training_dtype("auto") == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "stages": [{
        "name": "sft", "kind": "sft", "model": str(tiny_model_dir), "data": [str(FIX / "qa.jsonl")],
        "dtype": "bfloat16", "lora": {"r": 2, "alpha": 4, "dropout": 0.0},
        "training": {"max_steps": 1, "per_device_train_batch_size": 2, "report_to": [], "save_strategy": "no"}}]}),
        encoding="utf-8")
    r = load_recipe(p, output_dir=tmp_path / "runs")
    (m,) = run_recipe(r)
    assert m["metrics"]["dtype"] == "torch.bfloat16"
    with safe_open(r.stage_dir("sft") / "model" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118 (safe_open)
