"""Multi-turn dialogue evaluation: last doctor turn given the history, scored with BLEU/ROUGE."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hypnos.cli import app
from hypnos.eval import dialogue
from hypnos.eval.tasks import Task, TaskError, expand, get_tasks

SHARED = expand("${HYPNOS_DATA}", expand(".", __import__("pathlib").Path(".")))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared data (HYPNOS_DATA) not present")
TASK = Task(task="dlg", output_type="dialogue", dataset_path="x")
DOC = {"id": "d1", "conversations": [{"from": "human", "value": "我明天手术，今晚能喝水吗？"},
                                     {"from": "gpt", "value": "午夜前可以少量饮水。"},
                                     {"from": "human", "value": "那早上呢？"},
                                     {"from": "gpt", "value": "术前2小时停止饮用清饮料。"}]}


def test_split_last_turn_keeps_the_history():
    msgs, ref = dialogue.split_last_turn(TASK, DOC)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] and ref == "术前2小时停止饮用清饮料。"
    with pytest.raises(TaskError, match="no assistant turn"):
        dialogue.split_last_turn(TASK, {"id": "x", "conversations": [{"from": "human", "value": "在吗"}]})


def test_scores_hand_checked():
    s, rows = dialogue.score_answers(TASK, [DOC], {"d1": "术前2小时停止饮用清饮料。"})
    assert s["rougeL"] == 1.0 and s["bleu4"] == pytest.approx(100) and s["multi_turn"] == 1
    assert rows[0]["turns"] == 3
    s, _ = dialogue.score_answers(TASK, [DOC], {})
    assert s["missing"] == 1 and s["rougeL"] == 0.0


def test_local_model_sees_the_history(tiny_model_dir):
    from hypnos.eval.backends import LocalLM

    lm = LocalLM(str(tiny_model_dir), batch_size=2)
    text = lm.format(dialogue.split_last_turn(TASK, DOC)[0])
    assert "午夜前可以少量饮水。" in text and text.rstrip().endswith("assistant")
    s, rows = dialogue.evaluate(TASK, [DOC, DOC], lm, max_new_tokens=4)
    assert s["n"] == 2 and s["method"] == "generation" and rows[0]["prediction"] == rows[1]["prediction"]


@needs_shared
def test_real_dialogues_oracle_through_score(tmp_path):
    t = get_tasks(["disc_med_dialogue"])[0]
    docs = t.load()[0]
    assert sum(len(d["conversations"]) > 2 for d in docs) > 10
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"id": d["id"], "prediction": dialogue.split_last_turn(t, d)[1]},
                                        ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    res = CliRunner().invoke(app, ["eval", "score", "disc_med_dialogue", str(preds)])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["rougeL"] == 1.0 and s["n"] == len(docs) and s["missing"] == 0


@pytest.mark.parametrize("family", ["smollm2", "llama_sp"])
def test_anti_repetition_decoding_is_applied_and_changes_a_looping_answer(family, request, tmp_path):
    """A model whose next token depends only on the last one (attention and MLP outputs zeroed) loops under
    greedy decoding; ``no_repeat_ngram_size`` is passed to generate (no repeated n-gram in what it returns)
    and changes the answer, and the report states the setting."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hypnos.eval.backends import LocalLM
    from hypnos.eval.run import Config, _decoding

    src = request.getfixturevalue("tiny_model_dir" if family == "smollm2" else "llama_sp_dir")
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()  # the residual stream is the input embedding: a deterministic token -> token map
    model.save_pretrained(tmp_path / "loop")
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "loop")

    def repeats(ids: list[int], n: int) -> int:
        grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
        return len(grams) - len(set(grams))

    prompts = ["术前访视要问什么？", "Hello"]
    plain = LocalLM(str(tmp_path / "loop"), batch_size=2)
    guarded = LocalLM(str(tmp_path / "loop"), batch_size=2, no_repeat_ngram_size=2)
    a, b = plain.generate(prompts, 40), guarded.generate(prompts, 40)
    assert a != b
    batch = guarded._encode(prompts)
    for lm, want_repeats in ((plain, True), (guarded, False)):
        out = lm.model.generate(**batch, max_new_tokens=40, do_sample=False, pad_token_id=lm.tok.pad_token_id,
                                **lm.decoding())[:, batch["input_ids"].shape[1]:]
        assert (sum(repeats(row.tolist(), 2) for row in out) > 0) == want_repeats
    assert lm.tok.batch_decode(out, skip_special_tokens=True)[0].strip() == b[0]  # generate() used these settings
    cfg = Config(models={"m": "x"}, tasks=["anesthesia_openqa"], no_repeat_ngram_size=3)
    assert _decoding(cfg) == "greedy (no_repeat_ngram_size 3; every local model alike)"
    assert _decoding(Config(models={"m": "x"}, tasks=["anesthesia_openqa"])) == "greedy"


def test_bf16_generation_is_stated_and_runs_under_autocast(tiny_model_dir):
    """Open answers under bf16 autocast (a CPU that multiplies bf16): text comes back, the report says so."""
    import torch

    from hypnos.eval.backends import LocalLM
    from hypnos.eval.run import Config, _decoding

    lm = LocalLM(str(tiny_model_dir), batch_size=2, bf16_generate=True)
    seen = []
    hook = lm.model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = lm.generate(["麻醉前为什么要禁食？", "术后恶心怎么办？"], 6)
    hook.remove()
    assert len(out) == 2 and all(isinstance(t, str) for t in out) and set(seen) == {torch.bfloat16}
    cfg = Config(models={"m": "x"}, tasks=["anesthesia_openqa"], repetition_penalty=1.2, precision="bf16")
    assert _decoding(cfg) == "greedy (repetition_penalty 1.2, bf16 autocast; every local model alike)"
    assert "bf16" not in _decoding(Config(models={"m": "x"}, tasks=["anesthesia_openqa"], precision="fp32"))
