"""Training Chinese pieces and extending real tokenizers of both families (LLaMA, Chinese-LLaMA-2, Qwen2, SmolLM2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
from conftest import SHARED_DATA, needs_shared_data
from transformers import AutoTokenizer, LlamaTokenizer

from hypnos.common.io import DataError
from hypnos.tokenizer.extend import NEW_PIECES_FILE, detect_family, extend_tokenizer, load_bytelevel, to_bytelevel
from hypnos.tokenizer.train_spm import iter_corpus_texts, spm_pieces, train_spm

FIX = Path(__file__).parent / "fixtures" / "tokenizer"
TOK = SHARED_DATA / "tokenizers"  # ../shared/data or $HYPNOS_DATA
# Chinese, English, digits, mixed, punctuation, newlines, an emoji and a character outside every new piece
TEXTS = [
    "患者行全身麻醉，诱导用丙泊酚2mg/kg和舒芬太尼0.3μg/kg。",
    "Hello world, the patient received 1500 mL of saline.",
    "椎管内麻醉后血压降至85/50 mmHg，给予麻黄碱6mg。\n术后镇痛满意😀",
    "GABA-A受体激动剂：咪达唑仑 midazolam 2 mg IV；龘",
    "硬膜外导管\t置入深度 4 cm (L2-3)。",
]


@pytest.fixture(scope="module")
def pieces(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("spm")
    return spm_pieces(train_spm([FIX / "med_corpus.jsonl"], out, vocab_size=400))


def test_trained_pieces_are_medical_words(pieces):
    assert {"麻醉", "全身麻醉", "丙泊酚", "硬膜外", "舒芬太尼"} <= set(pieces)
    assert not any("▁" in p for p in pieces)


def test_jieba_pieces_do_not_cross_word_boundaries(tmp_path):
    plain = spm_pieces(train_spm([FIX / "med_corpus.jsonl"], tmp_path / "a", vocab_size=400))
    seg = spm_pieces(train_spm([FIX / "med_corpus.jsonl"], tmp_path / "b", vocab_size=400, use_jieba=True))
    assert "患者可" in plain and "患者可" not in seg  # jieba: 患者 | 可 are two words, kept apart
    assert "丙泊酚" in seg


def test_corpus_reader_names_file_and_line_of_a_bad_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "麻醉"}\n{"id": "b", "score": 3}\n{"id": "c", "text": "x"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: no text field"):
        list(iter_corpus_texts([bad]))
    with pytest.raises(DataError, match=r"missing.txt: file not found"):
        list(iter_corpus_texts([tmp_path / "missing.txt"]))
    (tmp_path / "plain.txt").write_text("第一行\n\n第二行\n", encoding="utf-8")
    assert list(iter_corpus_texts([tmp_path / "plain.txt"])) == ["第一行", "第二行"]


def _check_roundtrip(tok, texts=TEXTS):
    for t in texts:
        assert tok.decode(tok.encode(t, add_special_tokens=False)) == t


@needs_shared_data("tokenizers")
def test_llama_sentencepiece_extension(pieces, tmp_path):
    s = extend_tokenizer(TOK / "llama", pieces, tmp_path, max_new=200)
    assert s["family"] == "sentencepiece" and s["base_size"] == 32000 and 190 <= s["added"] <= 200
    old = spm.SentencePieceProcessor(model_file=str(TOK / "llama" / "tokenizer.model"))
    new = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert new.get_piece_size() == 32000 + s["added"]
    assert [new.id_to_piece(i) for i in range(32000)] == [old.id_to_piece(i) for i in range(32000)]
    assert new.piece_to_id("<0xE9>") == old.piece_to_id("<0xE9>")  # byte fallback kept
    assert new.encode("龘") == old.encode("龘")  # a character no piece covers still falls back to bytes
    auto, llama = AutoTokenizer.from_pretrained(tmp_path), LlamaTokenizer.from_pretrained(tmp_path)
    for t in TEXTS:  # HF fast tokenizer == LlamaTokenizer == SentencePiece itself, BOS included
        assert auto.encode(t) == llama.encode(t) == [1, *new.encode(t)]
    _check_roundtrip(auto)
    assert auto.encode("Hello world, 123") == [1, *old.encode("Hello world, 123")]  # English unchanged
    assert len(auto.encode(TEXTS[0])) < len(old.encode(TEXTS[0])) * 0.8
    assert auto.convert_ids_to_tokens(auto.encode("全身麻醉")) == ["<s>", "▁", "全身麻醉"]


@needs_shared_data("tokenizers")
def test_chinese_llama2_extension_keeps_hf_ids_consistent(pieces, tmp_path):
    s = extend_tokenizer(TOK / "chinese_llama2_alpaca2", pieces, tmp_path)
    assert s["base_size"] == 55296 and s["skipped_existing"] > 150  # many medical words are in it already
    auto, llama = AutoTokenizer.from_pretrained(tmp_path), LlamaTokenizer.from_pretrained(tmp_path)
    old = LlamaTokenizer.from_pretrained(TOK / "chinese_llama2_alpaca2")
    assert auto.convert_ids_to_tokens(list(range(55296))) == old.convert_ids_to_tokens(list(range(55296)))
    for t in TEXTS:
        assert auto.encode(t) == llama.encode(t)
    _check_roundtrip(auto)


@needs_shared_data("tokenizers")
@pytest.mark.parametrize("which", ["qwen2", "smollm2"])
def test_bytelevel_extension(which, pieces, tmp_path, request):
    base = TOK / "qwen2" if which == "qwen2" else request.getfixturevalue("smollm2_dir")
    old = load_bytelevel(base)
    s = extend_tokenizer(base, pieces, tmp_path)
    assert detect_family(base) == detect_family(tmp_path) == "bytelevel"
    new = AutoTokenizer.from_pretrained(tmp_path)
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    assert all(new_vocab[t] == i for t, i in old_vocab.items())  # no existing id moved
    assert len(new) == len(old) + s["added"]
    _check_roundtrip(new)
    assert new.encode("Hello world, 1500 mL") == old.encode("Hello world, 1500 mL")
    assert new.get_added_vocab() == old.get_added_vocab()  # real vocabulary entries, not "added tokens"
    # Chinese runs stay one pre-token in both regexes (\p{L}+), so multi-character pieces can apply
    pre = new.backend_tokenizer.pre_tokenizer.pre_tokenize_str("患者行全身麻醉后")
    assert [p for p, _ in pre] == [to_bytelevel("患者行全身麻醉后")]
    ids = new.encode("全身麻醉", add_special_tokens=False)
    assert new.convert_ids_to_tokens(ids) == [to_bytelevel("全身麻醉")] and ids[0] >= len(old)
    assert len(new.encode(TEXTS[0])) < len(old.encode(TEXTS[0]))
    # every new whole-character token is reachable: its text encodes to exactly that token
    for t in json.loads((tmp_path / NEW_PIECES_FILE).read_text(encoding="utf-8"))["tokens"]:
        if "\ufffd" not in t["text"]:
            assert new.encode(t["text"], add_special_tokens=False) == [t["id"]], t["text"]


@needs_shared_data("tokenizers")
def test_not_chinese_and_existing_pieces_are_skipped(tmp_path):
    s = extend_tokenizer(TOK / "llama", ["的", "mg", "丙泊酚2", "麻醉"], tmp_path)
    assert s["skipped_not_chinese"] == 2 and s["skipped_existing"] == 1 and s["added"] >= 1


def test_unknown_tokenizer_dir_is_a_clear_error(tmp_path):
    from hypnos.tokenizer.extend import TokenizerFamilyError

    with pytest.raises(TokenizerFamilyError, match="no tokenizer.model, tokenizer.json"):
        extend_tokenizer(tmp_path, ["麻醉"], tmp_path / "out")


@needs_shared_data("tokenizers")
def test_sentencepiece_extension_keeps_a_chat_template_saved_as_jinja(tmp_path):
    """transformers 5 saves a tokenizer's template as chat_template.jinja, not in tokenizer_config.json; the
    extended tokenizer must keep it (validate follows ``@tokenizer`` to the base and says it has one)."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(TOK / "chinese_llama2_alpaca2", base)
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    (base / "chat_template.jinja").write_text(template, encoding="utf-8")
    extend_tokenizer(base, ["麻醉诱导", "丙泊酚"], tmp_path / "out")
    assert AutoTokenizer.from_pretrained(tmp_path / "out").chat_template == template
