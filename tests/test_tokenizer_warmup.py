"""Warm-up of new vocabulary rows (tokenizer/warmup.py): only new rows move, distillation is aligned and exact,
and the tokenizer stage runs it, reports it and resumes around it."""

from __future__ import annotations

import json
import math
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hypnos.tokenizer.extend import extend_tokenizer
from hypnos.tokenizer.stage import build_model
from hypnos.tokenizer.train_spm import spm_pieces, train_spm
from hypnos.tokenizer.warmup import (
    WarmupConfig,
    distill_loss,
    distill_rows,
    new_row_ids,
    warmup_model_dir,
)

FIX = Path(__file__).parent / "fixtures" / "tokenizer"
TEXTS = ["患者行全身麻醉，诱导用丙泊酚2mg/kg和舒芬太尼。", "硬膜外导管置入深度 4 cm，术后镇痛满意。"]


@pytest.fixture(scope="module")
def extended(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny SmolLM2-tokenizer model extended with ~150 pieces of the fixture corpus, mean init."""
    out = tmp_path_factory.mktemp("ext")
    pieces = spm_pieces(train_spm([FIX / "med_corpus.jsonl"], out / "spm", vocab_size=400))
    extend_tokenizer(tiny_model_dir, pieces, out / "tok", 150)
    build_model(tiny_model_dir, out / "tok", out / "model", "mean")
    return out / "model"


@pytest.mark.parametrize("distill", [0.0, 1.0])
def test_warmup_moves_only_new_rows_and_lowers_the_loss(extended, tiny_model_dir, tmp_path, distill):
    from hypnos.tokenizer.analyze import bits_per_char, load_texts

    cfg = WarmupConfig(steps=8, learning_rate=2e-2, seq_len=32, batch_size=4, distill=distill, lora_steps=0)
    stats = warmup_model_dir(extended, [FIX / "med_corpus.jsonl"], tmp_path / "warm", cfg, teacher_dir=tiny_model_dir)
    assert stats["steps"] == 8 and stats["rows"] == len(new_row_ids(extended)) > 100
    assert json.loads((tmp_path / "warm" / "warmup.json").read_text(encoding="utf-8"))["config"]["distill"] == distill
    assert not (tmp_path / "warm.tmp").exists()
    before = AutoModelForCausalLM.from_pretrained(extended)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "warm")
    rows = torch.tensor(new_row_ids(extended))
    old = torch.ones(before.get_input_embeddings().weight.shape[0], dtype=torch.bool)
    old[rows] = False
    for (name, p0), (_, p1) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        if p0.shape[0] == old.shape[0]:  # the (tied) embedding matrix
            assert torch.equal(p0[old], p1[old]), name
            assert not torch.equal(p0[rows], p1[rows]), name
        else:
            assert torch.equal(p0, p1), name
    tok = AutoTokenizer.from_pretrained(tmp_path / "warm")
    texts = load_texts([FIX / "med_corpus.jsonl"], 16)
    assert bits_per_char(after, tok, texts) < bits_per_char(before, tok, texts)


def test_lora_phase_moves_the_body_but_never_an_old_row(extended, tmp_path):
    """Phase 2 (rows + LoRA, merged): the saved checkpoint is a plain model whose linear layers changed, old
    embedding rows are bit-for-bit the extension's, new rows moved, and the loss keeps falling."""
    cfg = WarmupConfig(steps=4, learning_rate=2e-2, seq_len=32, batch_size=4, lora_steps=6, lora_r=4,
                       lora_learning_rate=1e-2)
    stats = warmup_model_dir(extended, [FIX / "med_corpus.jsonl"], tmp_path / "warm", cfg)
    assert stats["lora_steps"] == 6 and stats["lora_first_loss"] is not None
    assert stats["last_loss"] < stats["first_loss"]
    saved = json.loads((tmp_path / "warm" / "config.json").read_text(encoding="utf-8"))
    assert "lora" not in json.dumps(saved).lower() and not (tmp_path / "warm" / "adapter_config.json").exists()
    before = AutoModelForCausalLM.from_pretrained(extended)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "warm")
    rows = torch.tensor(new_row_ids(extended))
    emb0, emb1 = before.get_input_embeddings().weight, after.get_input_embeddings().weight
    old = torch.ones(emb0.shape[0], dtype=torch.bool)
    old[rows] = False
    assert torch.equal(emb0[old], emb1[old]) and not torch.equal(emb0[rows], emb1[rows])
    moved = [n for (n, p0), (_, p1) in zip(before.named_parameters(), after.named_parameters(), strict=True)
             if p0.dim() == 2 and p0.shape[0] != emb0.shape[0] and not torch.equal(p0, p1)]
    assert any("q_proj" in n for n in moved) and any("down_proj" in n for n in moved), moved


def test_distillation_rows_pair_positions_that_have_read_the_same_text(extended, tiny_model_dir):
    tok, teacher_tok = AutoTokenizer.from_pretrained(extended), AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = distill_rows(tok, teacher_tok, TEXTS, chunk_chars=96)
    assert len(rows) == 2
    for text, row in zip(TEXTS, rows):
        assert len(row["input_ids"]) < len(row["teacher_ids"])  # the extension reads it in fewer tokens
        assert row["pairs"][0] == (0, 0) and len(row["pairs"]) >= 10
        for p, q in row["pairs"]:  # both have read exactly the same characters, and some remain
            prefix = tok.decode(row["input_ids"][1 : p + 1])
            assert prefix == teacher_tok.decode(row["teacher_ids"][1 : q + 1]) and text.startswith(prefix)
            assert len(prefix) < len(text)


def test_distill_loss_by_hand():
    first = torch.tensor([0, 1, 0])  # student token 2 is new and starts with base token 0
    student = torch.tensor([0.2, 0.5, 0.3]).log()[None, None, :]  # B x L x V_new
    pairs, mask = torch.tensor([[[0, 0]]]), torch.tensor([[1]])
    even = torch.tensor([0.5, 0.5]).log()[None, None, :]
    assert distill_loss(student, even, pairs, mask, first).item() == pytest.approx(0.0, abs=1e-6)
    skew = torch.tensor([0.25, 0.75]).log()[None, None, :]
    want = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert distill_loss(student, skew, pairs, mask, first).item() == pytest.approx(want, rel=1e-5)
    # a masked (padding) pair does not count
    two = torch.tensor([[[0, 0], [0, 0]]])
    assert distill_loss(student.expand(1, 1, 3), skew, two, torch.tensor([[1, 0]]), first).item() == pytest.approx(
        want, rel=1e-5)


def test_tokenizer_stage_warms_up_reports_and_resumes(tiny_model_dir, tmp_path):
    from hypnos.common.runner import load_recipe, run_recipe

    shutil.copy(FIX / "med_corpus.jsonl", tmp_path / "corpus.jsonl")
    shutil.copy(FIX / "heldout.jsonl", tmp_path / "heldout.jsonl")
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
        name: t
        stages:
          - name: tokenizer
            kind: tokenizer
            base_model: {tiny_model_dir}
            corpus: [corpus.jsonl]
            vocab_size: 400
            max_new_pieces: 150
            heldout: heldout.jsonl
            heldout_texts: 8
            warmup: {{steps: 4, seq_len: 32, distill: 1.0}}
        """), encoding="utf-8")
    [m] = run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
    out = tmp_path / "runs" / "t" / "tokenizer"
    assert m["outputs"] == {"model": "warm", "analysis": "analysis.json"}
    rows = {r["name"]: r for r in json.loads((out / "analysis.json").read_text(encoding="utf-8"))}
    assert set(rows) == {"before", "after", "warmed_up"}
    assert rows["after"]["reachability"]["alone"]["reachable"] == rows["after"]["reachability"]["alone"]["checked"]
    assert 0 < rows["after"]["new_tokens_used"] <= rows["after"]["new_tokens"]
    assert m["metrics"]["warmup_last_loss"] > 0 and "warmed_up_bits_per_char" in m["metrics"]
    # resume after a kill before the analysis: the warmed-up model is reused as found
    stamp = (out / "warm" / "warmup.json").stat().st_mtime_ns
    (out / "analysis.json").unlink()
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    (out / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}), encoding="utf-8")
    [m2] = run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
    assert m2["resumed"] and (out / "warm" / "warmup.json").stat().st_mtime_ns == stamp
    assert (out / "analysis.json").is_file()


def test_warmup_corpus_can_differ_from_the_vocabulary_corpus(tiny_model_dir, tmp_path):
    """Pieces from corpus + general QA, warm-up on the corpus only (general data left to the general SFT stage)."""
    from hypnos.common.runner import load_recipe, run_recipe

    lines = (FIX / "med_corpus.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "warm.jsonl").write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
        name: t
        stages:
          - {{name: tokenizer, base_model: {tiny_model_dir}, corpus: [corpus.jsonl], vocab_size: 400,
              max_new_pieces: 150, measure_bits: false,
              warmup: {{steps: 1, lora_steps: 0, seq_len: 32, corpus: [warm.jsonl]}}}}
        """), encoding="utf-8")
    [m] = run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
    stats = json.loads((tmp_path / "runs/t/tokenizer/warm/warmup.json").read_text(encoding="utf-8"))
    assert stats["corpus"] == {"files": ["warm.jsonl"], "texts": 3} and m["metrics"]["warmup_texts"] == 3
    assert len(lines) > 3


def test_cli_warmup_errors_are_clear(extended, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from hypnos.tokenizer.cli import app

    corpus = str(FIX / "med_corpus.jsonl")
    r = CliRunner().invoke(app, ["warmup", str(tiny_model_dir), corpus, "--out", str(tmp_path / "w")])
    assert r.exit_code == 1 and "no new_tokens.json" in r.output
    r = CliRunner().invoke(app, ["warmup", str(extended), corpus, "--out", str(tmp_path / "w"), "--distill", "1"])
    assert r.exit_code == 1 and "--distill needs --teacher" in r.output
    r = CliRunner().invoke(app, ["warmup", str(extended), corpus, "--out", str(tmp_path / "w"), "--steps", "2",
                                 "--lora-steps", "1"])
    assert r.exit_code == 0 and "new rows trained 2 + 1 (LoRA) steps" in r.output, r.output
