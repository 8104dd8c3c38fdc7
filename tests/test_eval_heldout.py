"""Held-out bits/char (eval/heldout.py): exact on a uniform model, paired CIs, context scoring, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from hypnos.common.io import DataError
from hypnos.eval.heldout import (
    Item,
    bits_per_char,
    item_bits,
    item_chars,
    load_items,
    paired_difference,
)

ROOT = Path(__file__).resolve().parents[1]
ONLINE = ROOT / "examples/heldout/online_qa.jsonl"


@pytest.fixture(scope="module")
def uniform_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a zero output matrix: every next-token distribution is uniform over the vocabulary."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    out = tmp_path_factory.mktemp("uniform")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_uniform_model_scores_exactly_log2_vocab_per_token(uniform_dir):
    tok = AutoTokenizer.from_pretrained(uniform_dir)
    model = AutoModelForCausalLM.from_pretrained(uniform_dir)
    items = load_items([ONLINE], "text", 6, max_chars=80)
    bits = item_bits(model, tok, items, batch_size=4)  # padded batches of unequal texts
    v = model.get_output_embeddings().weight.shape[0]
    n_tok = [len(tok(it.target, add_special_tokens=False)["input_ids"]) for it in items]
    np.testing.assert_allclose(bits, np.array(n_tok) * math.log2(v), rtol=1e-5)
    # answer mode: the question is context, only the answer's tokens are scored
    ans = load_items([ONLINE], "answer", 6, max_chars=80)
    assert ans[0].context.endswith("\n") and ans[0].target.startswith("你好")
    n_ans = [len(tok(it.target, add_special_tokens=False)["input_ids"]) for it in ans]
    np.testing.assert_allclose(item_bits(model, tok, ans), np.array(n_ans) * math.log2(v), rtol=1e-5)


def test_item_bits_match_the_tokenizer_analysis_and_do_not_depend_on_batching(tiny_model_dir):
    from hypnos.tokenizer.analyze import bits_per_char as analysis_bpc

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    items = load_items([ONLINE], "text", 5, max_chars=80)
    one = item_bits(model, tok, items, batch_size=1)
    np.testing.assert_allclose(item_bits(model, tok, items, batch_size=5), one, rtol=1e-4)
    # batches are formed by length: each text's bits must still land on that text (longest first here)
    varied = [Item(it.id, it.context, it.target[: 80 - 12 * k]) for k, it in enumerate(items)]
    alone = [item_bits(model, tok, [it])[0] for it in varied]
    np.testing.assert_allclose(item_bits(model, tok, varied, batch_size=2), alone, rtol=1e-4)
    chars = item_chars(items)
    assert one.sum() / chars.sum() == pytest.approx(analysis_bpc(model, tok, [it.target for it in items]), rel=1e-4)


def test_bits_per_char_and_paired_difference_by_hand():
    bits, chars = np.array([10.0, 30.0]), np.array([5.0, 5.0])
    r = bits_per_char(bits, chars)
    assert r["bits_per_char"] == 4.0 and r["chars"] == 10 and 2.0 <= r["ci"][0] <= r["ci"][1] <= 6.0
    d = paired_difference(np.array([10.0, 30.0]), np.array([5.0, 25.0]), chars)
    assert d["difference"] == 1.0 and d["ci"] == [1.0, 1.0] and d["excludes_zero"]  # every resample: +1 bit/char
    same = paired_difference(bits, bits, chars)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0] and not same["excludes_zero"]
    # differences of opposite sign: the interval straddles 0
    mixed = paired_difference(np.array([10.0, 30.0, 20.0, 20.0]), np.array([20.0, 20.0, 20.0, 20.0]), np.full(4, 5.0))
    assert mixed["ci"][0] < 0 < mixed["ci"][1] and not mixed["excludes_zero"]
    with pytest.raises(ValueError, match="paired texts differ"):
        paired_difference(bits, bits[:1], chars)


def test_records_of_every_shape_and_a_clear_error(tmp_path):
    f = tmp_path / "h.jsonl"
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"id": "a", "instruction": ["问"], "output": ["答"]},  # Huatuo-style lists
        {"text": "一段文字"},
        {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "您好"}]},
        {"id": "d", "score": 3},
    ]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"h.jsonl:4: no text to score"):
        load_items([f], "answer")
    f.write_text("\n".join(f.read_text(encoding="utf-8").splitlines()[:3]) + "\n", encoding="utf-8")
    assert load_items([f], "answer") == [Item("a", "问\n", "答"), Item(f"{f}:2", "", "一段文字"),
                                         Item(f"{f}:3", "你好\n", "您好")]
    assert [it.target for it in load_items([f], "text")] == ["问\n答", "一段文字", "你好\n您好"]


def test_cli_prints_models_and_a_paired_ci(tiny_model_dir, uniform_dir, tmp_path):
    from hypnos.eval.cli import app

    out = tmp_path / "h.json"
    res = CliRunner().invoke(app, ["heldout", str(ONLINE), "-m", f"tiny={tiny_model_dir}", "-m",
                                   f"uniform={uniform_dir}", "--pair", "uniform,tiny", "--max-texts", "4", "--max-chars", "80",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text(encoding="utf-8"))
    assert set(r["models"]) == {"tiny", "uniform"} and len(r["per_text"]["tiny"]) == 4
    assert r["pairs"][0]["a"] == "uniform" and "paired 95% CI" in res.output
    bad = CliRunner().invoke(app, ["heldout", str(ONLINE), "-m", f"tiny={tiny_model_dir}", "--pair", "tiny,nope"])
    assert bad.exit_code != 0 and "no model named 'nope'" in bad.output


def test_bf16_autocast_is_close_to_fp32_and_stated(tiny_model_dir):
    """bf16 autocast (fp32 weights) is a faster reading of the same model: within 1% of fp32, and said so."""
    from hypnos.eval.heldout import evaluate

    res = {p: evaluate({"a": tiny_model_dir}, [ONLINE], "answer", 12, 80, precision=p) for p in ("fp32", "bf16")}
    assert res["fp32"]["settings"]["precision"] == "fp32"
    assert res["bf16"]["settings"]["precision"] == "bf16 autocast"
    fp, bf = (res[p]["models"]["a"]["bits_per_char"] for p in ("fp32", "bf16"))
    assert fp != bf and bf == pytest.approx(fp, rel=0.01)


def test_cut_by_max_texts_is_counted_and_logged(tiny_model_dir, caplog):
    """A pooled set longer than max_texts loses its tail (often a whole file): the result says how many texts
    there were, and a warning names the files."""
    import logging

    from hypnos.eval.heldout import evaluate

    n = len(load_items([ONLINE], "answer"))
    with caplog.at_level(logging.WARNING, logger="hypnos"):
        r = evaluate({"a": tiny_model_dir}, [ONLINE], "answer", 5, 40)
    assert r["models"]["a"]["texts"] == 5 and r["settings"]["texts_available"] == n > 5
    assert f"5 of {n} texts scored" in caplog.text and ONLINE.name in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hypnos"):
        evaluate({"a": tiny_model_dir}, [ONLINE], "answer", n, 40)
    assert "texts scored" not in caplog.text


@pytest.mark.parametrize("family", ["tiny_model_dir", "llama_sp_dir"])
def test_length_batching_keeps_each_texts_bits_with_both_tokenizer_families(family, request):
    """Batches formed by length, on SmolLM2's byte-level BPE and the LLaMA SentencePiece tokenizer (digits,
    letters after 答案：, Chinese after a space): each text's bits equal scoring it alone."""
    d = request.getfixturevalue(family)
    tok, model = AutoTokenizer.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d)
    texts = ["答案：B，剂量2.5 mg/kg", "患者 术后恶心呕吐，予昂丹司琼4mg静注后缓解。", "CT 检查", "好"]
    items = [Item(f"t{i}", "问：", t) for i, t in enumerate(texts)]
    alone = [item_bits(model, tok, [it])[0] for it in items]
    np.testing.assert_allclose(item_bits(model, tok, items, batch_size=3), alone, rtol=1e-4)
