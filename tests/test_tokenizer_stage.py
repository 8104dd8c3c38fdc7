"""The ``tokenizer`` stage end to end on tiny real models, its resume, and the ``hypnos tokenizer`` commands."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from hypnos.common.runner import load_recipe, run_recipe
from hypnos.tokenizer.cli import app

FIX = Path(__file__).parent / "fixtures" / "tokenizer"
TOK = SHARED_DATA / "tokenizers"  # ../shared/data or $HYPNOS_DATA


def _recipe(tmp_path: Path, base: Path, **extra) -> Path:
    shutil.copy(FIX / "med_corpus.jsonl", tmp_path / "corpus.jsonl")
    shutil.copy(FIX / "heldout.jsonl", tmp_path / "heldout.jsonl")
    fields = "".join(f"\n    {k}: {json.dumps(v)}" for k, v in extra.items())
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
        name: t
        stages:
          - name: tokenizer
            kind: tokenizer
            base_model: {base}
            corpus: [corpus.jsonl]
            vocab_size: 400
            max_new_pieces: 150
            heldout: heldout.jsonl""") + fields + "\n", encoding="utf-8")
    return tmp_path / "r.yaml"


def test_stage_extends_resizes_analyzes_and_resumes(tiny_model_dir, tmp_path):
    recipe = _recipe(tmp_path, tiny_model_dir, init="fused", warmup={"steps": 0})
    [m] = run_recipe(load_recipe(recipe, output_dir=tmp_path / "runs"))
    out = tmp_path / "runs" / "t" / "tokenizer"
    assert m["outputs"] == {"model": "model", "analysis": "analysis.json"}
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert len(tok) == model.get_input_embeddings().weight.shape[0] == 49152 + m["counts"]["added"]
    assert 140 <= m["counts"]["added"] <= 150
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    before, after = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    assert before["name"] == "before" and after["name"] == "after"
    assert after["tokens_per_char"] < before["tokens_per_char"] * 0.7 and after["roundtrip"] == 1.0
    assert after["word_coverage"] > before["word_coverage"]
    assert 0 < after["bits_per_char"] < 100 and 0 < before["bits_per_char"] < 100
    assert m["metrics"]["after_tokens_per_char"] == after["tokens_per_char"]

    # a kill after the tokenizer step: the trained SentencePiece model and tokenizer are reused as found
    spm_mtime = (out / "spm" / "spm.model").stat().st_mtime_ns
    shutil.rmtree(out / "model")
    (out / "analysis.json").unlink()
    (out / "model.tmp").mkdir()  # a half-written model from the killed run
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    (out / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}), encoding="utf-8")
    [m2] = run_recipe(load_recipe(recipe, output_dir=tmp_path / "runs"))
    assert m2["resumed"]
    assert (out / "spm" / "spm.model").stat().st_mtime_ns == spm_mtime
    assert not (out / "model.tmp").exists() and (out / "model" / "new_tokens.json").is_file()
    assert m2["counts"] == m["counts"]


@needs_shared_data("tokenizers")
def test_stage_on_sentencepiece_llama_with_untied_head(tmp_path):
    base = tmp_path / "tiny_llama"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
                     ).save_pretrained(base)
    shutil.copy(TOK / "llama" / "tokenizer.model", base / "tokenizer.model")
    recipe = _recipe(tmp_path, base, init="mean", measure_bits=False, warmup={"steps": 2, "seq_len": 32, "lora_steps": 2})
    [m] = run_recipe(load_recipe(recipe, output_dir=tmp_path / "runs"))
    out = tmp_path / "runs" / "t" / "tokenizer" / "model"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert m["metrics"]["family"] == "sentencepiece"
    assert model.lm_head.weight.shape[0] == model.model.embed_tokens.weight.shape[0] == 32000 + m["counts"]["added"]
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_ids_to_tokens(tok.encode("全身麻醉")) == ["<s>", "▁", "全身麻醉"]


def test_stage_config_rejects_unknown_keys_and_missing_files(tmp_path):
    from hypnos.common.runner import validate_recipe
    from hypnos.common.stage import ConfigError

    recipe = _recipe(tmp_path, tmp_path, vocab=10)
    with pytest.raises(ConfigError, match="r.yaml:10: stage 'tokenizer': vocab: unknown key"):
        load_recipe(recipe)
    recipe = _recipe(tmp_path, tmp_path)
    (tmp_path / "heldout.jsonl").unlink()
    assert any("heldout 'heldout.jsonl': file not found" in p for p in validate_recipe(load_recipe(recipe)))


@needs_shared_data("tokenizers")
def test_cli_train_extend_analyze(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(FIX / "med_corpus.jsonl"), "--out", str(tmp_path / "spm"),
                            "--vocab-size", "400"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["extend", str(TOK / "llama"), str(tmp_path / "spm" / "spm.model"),
                            "--out", str(tmp_path / "tok"), "--max-new", "50"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["analyze", str(FIX / "heldout.jsonl"), "--tokenizer", f"ext={tmp_path / 'tok'}",
                            "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    [row] = json.loads((tmp_path / "rep.json").read_text(encoding="utf-8"))
    assert row["name"] == "ext" and row["roundtrip"] == 1.0 and (tmp_path / "rep.png").stat().st_size > 1000
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "麻醉"}\n{"id": "b"}\n', encoding="utf-8")
    r = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "bad.jsonl:2: no text field" in r.output
