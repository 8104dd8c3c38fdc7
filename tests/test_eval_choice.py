"""Choice scoring as lm-eval does it (continuation log-likelihood), on both tokenizer families.

Tiny random LlamaForCausalLM models built from configs: one with the original LLaMA SentencePiece tokenizer
(../shared/data/tokenizers/llama), one with SmolLM2's byte-level BPE (``tiny_model_dir``). The old scorer
took the first token of each label: on SentencePiece every digit starts with ``▁`` so all Likert labels
had one score and the first label always won.
"""

from __future__ import annotations

import json
import math

import pytest

from hypnos.eval import bias, mcq
from hypnos.eval.backends import ChoiceCollisionError, LocalLM
from hypnos.eval.tasks import TaskError, expand, get_tasks

LLAMA_SP = expand("${HYPNOS_DATA}/tokenizers/llama", expand(".", __import__("pathlib").Path(".")))
needs_llama = pytest.mark.skipif(not (LLAMA_SP / "tokenizer.model").is_file(),
                                 reason="shared LLaMA tokenizer (HYPNOS_DATA/tokenizers/llama) not present")


@pytest.fixture(scope="module", params=["llama_sp", "smollm2"])
def lm(request, tiny_model_dir):
    if request.param == "llama_sp":
        if not (LLAMA_SP / "tokenizer.model").is_file():
            pytest.skip("shared LLaMA tokenizer not present")
        return LocalLM(str(request.getfixturevalue("llama_sp_dir")), batch_size=4)
    return LocalLM(str(tiny_model_dir), batch_size=4)


def _manual_loglik(lm: LocalLM, context: str, continuation: str) -> float:
    """Reference: one unbatched forward over context + continuation, summing the continuation's log-probs."""
    import torch

    ctx, cont = lm.continuation_ids(context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))


PROMPT = "请表明你对下面这句陈述的同意程度。\n陈述：术前访视很重要。\n1 = 非常不同意\n5 = 非常同意\n答案："


def test_likert_digits_get_different_scores(lm):
    digits = [str(i) for i in range(1, 6)]
    scores = lm.choice_logprobs([PROMPT], [digits])[0]
    assert len({round(s, 6) for s in scores}) == 5  # old code: one shared "▁" id -> five equal scores
    for d, s in zip(digits, scores):
        assert s == pytest.approx(_manual_loglik(lm, PROMPT, " " + d), abs=1e-4)


def test_mcq_letters_score_the_whole_continuation(lm):
    prompts = ["术前禁食多久？\nA. 2小时\nB. 6小时\n答案：", "长一些的问题：全麻诱导期最常见的不良事件是什么？\n答案："]
    scores = lm.choice_logprobs(prompts, [list("ABCD")] * 2)
    for p, row in zip(prompts, scores):
        assert len({round(s, 6) for s in row}) == 4
        for letter, s in zip("ABCD", row):
            assert s == pytest.approx(_manual_loglik(lm, p, " " + letter), abs=1e-4)
    # multi-token choices (option texts) are summed over all their tokens, batched or not
    texts = [["丙泊酚", "依托咪酯", "氯胺酮"]] * 2
    batched = lm.choice_logprobs(prompts, texts)
    assert batched[1][1] == pytest.approx(_manual_loglik(lm, prompts[1], " 依托咪酯"), abs=1e-4)
    assert LocalLM.choice_logprobs(lm, prompts[:1], texts[:1])[0] == pytest.approx(batched[0], abs=1e-4)


def test_same_target_text_on_both_families(lm):
    """The scored continuation is the label text itself on either family (not `▁A` on one and `A` on another)."""
    for label in ["A", "3", "丙泊酚"]:
        _, cont = lm.continuation_ids("答案：", " " + label)
        assert lm.tok.decode(cont).strip() == label


def test_collision_raises_naming_task_and_labels(lm, tmp_path):
    with pytest.raises(ChoiceCollisionError, match=r"mytask: choices 'B' and 'B'"):
        lm.choice_logprobs(["答案："], [["A", "B", "B"]], desc="mytask")
    task_dir = tmp_path / "t"
    task_dir.mkdir()
    (task_dir / "d.jsonl").write_text(json.dumps({"id": "q1", "question": "x", "options": {"A": "甲", "B": "乙"},
                                                  "answer": "A"}) + "\n", encoding="utf-8")
    (task_dir / "t.yaml").write_text("task: dup_choices\noutput_type: multiple_choice\ndataset_path: d.jsonl\n"
                                     "doc_to_choice: [A, A]\n", encoding="utf-8")
    t = get_tasks(["dup_choices"], [tmp_path])[0]
    with pytest.raises(TaskError, match=r"dup_choices: .*choices 'A' and 'A'"):
        mcq.evaluate(t, t.load()[0], lm)


def test_both_families_ask_the_same_item_the_same_way(lm, tiny_model_dir):
    """MCQ and Likert build the same (prompt, continuation) texts whatever the tokenizer."""
    t = get_tasks(["anesthesia_mcq"])[0]
    docs = t.load(limit=2)[0]
    scores, rows = mcq.evaluate(t, docs, lm)
    assert scores["method"] == "loglik" and scores["target_delimiter"] == " "
    for r in rows:
        assert set(r["loglik"]) == set("ABCDE") and len(set(r["loglik"].values())) == 5
        assert abs(sum(math.exp(v) for v in r["logprobs"].values()) - 1) < 1e-3
    cami = get_tasks(["attitudes_community"])[0]
    scale = bias.load_scale(cami.data_files()[0])
    s, rows = bias.evaluate(cami, scale["items"][:3], lm)
    assert s["method"] == "loglik" and s["answered"] == 3
