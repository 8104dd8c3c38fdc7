"""Every new byte-level piece is reachable: it encodes to itself alone, and applies in typical contexts.

A realistic extension (~3,000 tokens from the project's sample corpus, SentencePiece vocabulary 8,000) of the
real Qwen2 tokenizer in ../shared/data and of SmolLM2. Before the fix, pieces planned early were merged first
and stole sub-pieces of later ones (低钾血症 -> 低 + 钾血症), and no piece applied after a space.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_data
from transformers import AutoTokenizer

from hypnos.tokenizer.extend import NEW_PIECES_FILE, extend_tokenizer, reachability
from hypnos.tokenizer.train_spm import spm_pieces, train_spm

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [ROOT / "examples/corpus/medical_corpus.jsonl", ROOT / "examples/general/general_medical_qa.jsonl"]
# Chinese after a space, as in real notes: the extension learns space-prefixed variants for such runs
SPACED = ["行 CT 检查发现肺部阴影", "血压 120/80 mmHg 患者无不适", "MRI 检查发现腰椎间盘突出", "CT 检查发现少量积液",
          "给予 0.9% 氯化钠 500 mL 静脉滴注", "SpO2 降至 88% 患者出现发绀", "HR 110 次/分 患者烦躁"]


@pytest.fixture(scope="module")
def pieces(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("spm")
    extra = out / "spaced.txt"
    extra.write_text("\n".join(SPACED * 3) + "\n", encoding="utf-8")
    return spm_pieces(train_spm([*CORPUS, extra], out, vocab_size=8000))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "spaced.txt"
    out.write_text("\n".join(SPACED * 3) + "\n", encoding="utf-8")
    return out


def _base(which: str, request) -> Path:
    if which == "qwen2":
        return shared_data("tokenizers", "qwen2")
    return request.getfixturevalue("smollm2_dir")


@pytest.mark.parametrize("which", ["qwen2", "smollm2"])
def test_every_new_piece_encodes_to_itself_and_reachability_is_reported(which, pieces, corpus_file, tmp_path,
                                                                         request):
    base = _base(which, request)
    s = extend_tokenizer(base, pieces, tmp_path, 3000, corpus=[*CORPUS, corpus_file])
    assert s["added"] >= 2900
    tok = AutoTokenizer.from_pretrained(tmp_path)
    new = json.loads((tmp_path / NEW_PIECES_FILE).read_text(encoding="utf-8"))
    whole = [t for t in new["tokens"] if "\ufffd" not in t["text"]]
    bad = [t["text"] for t in whole if tok.encode(t["text"], add_special_tokens=False) != [t["id"]]]
    assert bad == [], f"{len(bad)} of {len(whole)} new tokens do not encode to themselves: {bad[:10]}"
    r = new["reachability"]
    assert r["alone"]["reachable"] == r["alone"]["checked"] == len(whole)
    for ctx in ("after_space", "after_comma", "after_period", "after_latin", "in_sentence"):
        assert 0 <= r[ctx]["reachable"] <= r[ctx]["checked"] == len([t for t in whole if not t["text"].startswith(" ")])
    assert r == reachability(tok, new["tokens"])  # the report is what the saved tokenizer does
    # Chinese after a space: the run starts with the same piece as without the space, through a variant
    first = tok.decode(tok.encode("检查发现", add_special_tokens=False)[:1])
    assert len(first) >= 2 and " " + first in {t["text"] for t in new["tokens"]}
    assert " " + first in [tok.decode([i]) for i in tok.encode("MRI 检查发现", add_special_tokens=False)]
    assert s["space_variants"] >= 1 and r["after_space"]["reachable"] >= 1
    assert tok.decode(tok.encode("CT 检查发现肺部阴影", add_special_tokens=False)) == "CT 检查发现肺部阴影"
