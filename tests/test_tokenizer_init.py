"""Resizing models to an extended tokenizer and initialising the new rows (tiny real Llama models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import shared_data
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hypnos.tokenizer.extend import extend_tokenizer, read_new_tokens
from hypnos.tokenizer.init_embeddings import fusion_weights, is_tied, resize_and_init


@pytest.fixture(scope="module")
def llama_ext(tmp_path_factory) -> Path:
    """LLaMA's tokenizer extended with a few words whose characters LLaMA encodes as bytes or single pieces."""
    out = tmp_path_factory.mktemp("llama_ext")
    extend_tokenizer(shared_data("tokenizers", "llama"), ["麻醉", "丙泊酚", "舒芬太尼", "硬膜外"], out)
    return out


def _tiny(vocab: int, tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied))


def test_fusion_weights_grow_with_position_and_sum_to_one():
    assert torch.allclose(fusion_weights(3), torch.tensor([1 / 6, 2 / 6, 3 / 6], dtype=torch.float64))
    assert torch.allclose(fusion_weights(3, "decreasing"), torch.tensor([3 / 6, 2 / 6, 1 / 6], dtype=torch.float64))
    assert fusion_weights(1).tolist() == [1.0]


@pytest.mark.parametrize("method", ["fused", "mean"])
def test_untied_rows_equal_hand_computed_values(llama_ext, method):
    tok = AutoTokenizer.from_pretrained(llama_ext)
    sub = read_new_tokens(llama_ext)
    model = _tiny(32000, tied=False)
    emb0 = model.get_input_embeddings().weight.detach().clone()
    head0 = model.get_output_embeddings().weight.detach().clone()
    stats = resize_and_init(model, len(tok), sub, method)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert stats["old_rows"] == 32000 and emb.shape[0] == head.shape[0] == len(tok) and not is_tied(model)
    assert torch.equal(emb[:32000], emb0) and torch.equal(head[:32000], head0)  # old rows untouched
    new_id = tok.convert_tokens_to_ids("麻醉")
    parts = sub[new_id]
    # 麻 is a LLaMA piece, 醉 is not: it falls back to its three UTF-8 bytes
    assert [tok.convert_ids_to_tokens(i) for i in parts] == ["麻", "<0xE9>", "<0x86>", "<0x89>"]
    w = [1 / 10, 2 / 10, 3 / 10, 4 / 10] if method == "fused" else [1 / 4] * 4
    for matrix, before in ((emb, emb0), (head, head0)):
        expected = sum(wi * before[p] for wi, p in zip(w, parts))
        assert torch.allclose(matrix[new_id], expected, atol=1e-6)


def test_tied_model_stays_tied_and_random_changes_only_new_rows(smollm2_dir, tmp_path):
    ext = tmp_path / "ext"
    extend_tokenizer(smollm2_dir, ["麻醉", "丙泊酚"], ext)
    tok, sub = AutoTokenizer.from_pretrained(ext), read_new_tokens(ext)
    model = _tiny(49152, tied=True)
    assert is_tied(model)
    emb0 = model.get_input_embeddings().weight.detach().clone()
    resize_and_init(model, len(tok), sub, "random")
    emb = model.get_input_embeddings().weight
    assert is_tied(model) and torch.equal(emb[:49152], emb0) and emb.shape[0] == len(tok)
    new_id = tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(tok.encode("丙泊酚"))[0])
    assert new_id >= 49152 and torch.isfinite(emb[new_id]).all()
    assert not torch.allclose(emb[new_id], emb0[sub[new_id]].mean(0))  # random, not the sub-piece mean
    resize_and_init(model, len(tok), sub, "fused")  # already the right size: only rows are rewritten
    assert is_tied(model)
    assert torch.allclose(model.get_output_embeddings().weight[new_id],
                          sum(w * emb0[p] for w, p in zip(fusion_weights(len(sub[new_id])).float(), sub[new_id])),
                          atol=1e-6)


def test_sub_pieces_that_do_not_fit_the_model_are_an_error():
    with pytest.raises(ValueError, match="do not fit a model with 100 rows"):
        resize_and_init(_tiny(100, tied=True), 120, {110: [5, 150]}, "mean")
    with pytest.raises(ValueError, match="init must be one of"):
        resize_and_init(_tiny(100, tied=True), 120, {110: [5]}, "zeros")
