"""Metric functions of the evaluation, each against hand-computed values and the reference libraries."""

from __future__ import annotations

import math

import pytest

from hypnos.eval import bias, judge, mcq, ner, openqa
from hypnos.eval.stats import bootstrap_ci, mean_ci


# ---- open QA text metrics ---------------------------------------------------------------------
def test_text_metrics_hand_checked():
    # hyp 麻醉药物 (4 chars) vs ref 麻醉诱导药物 (6): unigrams all match; bigrams 麻醉, 药物 of 3 match
    m = openqa.text_metrics(["麻醉药物"], ["麻醉诱导药物"])
    bp = math.exp(1 - 6 / 4)
    assert m["bleu1"] == pytest.approx(100 * bp, abs=1e-6)
    assert m["bleu2"] == pytest.approx(100 * bp * math.sqrt(1 * 2 / 3), abs=1e-6)
    assert m["rouge1"] == pytest.approx(0.8)  # P 4/4, R 4/6
    assert m["rouge2"] == pytest.approx(0.5)  # P 2/3, R 2/5
    assert m["rougeL"] == pytest.approx(0.8)  # LCS 4
    assert m["gleu"] == pytest.approx(1 / 3)  # 6 matching 1-4grams; min(6/10, 6/18)
    assert m["distinct1"] == 1.0 and m["distinct2"] == 1.0
    assert "corpus" in m["settings"]["bleu"] and "smooth_method=exp" in m["settings"]["bleu"]


def test_text_metrics_hand_checked_word_order():
    # hyp 患者术后疼痛 (6 chars) vs ref 术后患者疼痛明显 (8): all 6 unigrams match, BP exp(1 - 8/6)
    m = openqa.text_metrics(["患者术后疼痛"], ["术后患者疼痛明显"])
    assert m["bleu1"] == pytest.approx(100 * math.exp(1 - 8 / 6)) and round(m["bleu1"], 2) == 71.65
    assert m["rouge1"] == pytest.approx(2 * 1 * (6 / 8) / (1 + 6 / 8)) and round(m["rouge1"], 3) == 0.857
    # bigrams: 患者 术后 疼痛 of hyp's 5 and ref's 7
    assert m["rouge2"] == pytest.approx(2 * (3 / 5) * (3 / 7) / (3 / 5 + 3 / 7)) == pytest.approx(0.5)
    # LCS 术后疼痛 = 4: P 4/6, R 4/8
    assert m["rougeL"] == pytest.approx(2 * (4 / 6) * (4 / 8) / (4 / 6 + 4 / 8)) and round(m["rougeL"], 3) == 0.571


def test_identical_and_disjoint():
    same = openqa.text_metrics(["术前禁食六小时"], ["术前禁食六小时"])
    assert same["bleu4"] == pytest.approx(100) and same["rougeL"] == pytest.approx(1) and same["gleu"] == 1
    none = openqa.text_metrics(["甲乙丙丁"], ["子丑寅卯"])
    assert none["bleu1"] == 0 and none["rouge1"] == 0 and none["gleu"] == 0


def test_distinct_hand_checked():
    assert openqa.distinct(["麻醉麻醉"], 1) == 0.5
    assert openqa.distinct(["麻醉麻醉"], 2) == pytest.approx(2 / 3)
    assert openqa.distinct([""], 2) == 0.0


def test_zh_tokenization_matches_sacrebleu_zh():
    from sacrebleu.metrics import BLEU

    hyp = ["患者术前应禁食8小时，禁饮2小时。", "丙泊酚可引起低血压和注射痛"]
    ref = ["成人择期手术术前禁食8小时、禁清饮2小时。", "丙泊酚常见不良反应为注射痛及低血压"]
    ours = openqa.text_metrics(hyp, ref, how="zh")
    for n in (1, 2, 4):
        lib = BLEU(tokenize="zh", max_ngram_order=n).corpus_score(hyp, [ref]).score
        assert ours[f"bleu{n}"] == pytest.approx(lib, abs=1e-9)


def test_rouge_and_gleu_match_libraries_on_jieba_words():
    import jieba
    from nltk.translate.gleu_score import corpus_gleu
    from rouge_score.rouge_scorer import RougeScorer

    hyp, ref = ["麻醉诱导后出现低血压"], ["全身麻醉诱导后常出现低血压"]
    ours = openqa.text_metrics(hyp, ref, how="jieba")

    class Words:
        def tokenize(self, text):
            return [w for w in jieba.lcut(text) if w.strip()]

    lib = RougeScorer(["rougeL"], tokenizer=Words()).score(ref[0], hyp[0])["rougeL"].fmeasure
    assert ours["rougeL"] == pytest.approx(lib)
    assert 0 < lib < 1
    assert ours["gleu"] == pytest.approx(corpus_gleu([[Words().tokenize(ref[0])]], [Words().tokenize(hyp[0])]))


def test_rouge_is_not_zero_on_chinese():
    # rouge-score's default tokenizer drops every Chinese character; ours must not
    assert openqa.text_metrics(["麻醉"], ["麻醉"])["rouge1"] == 1.0


# ---- multiple choice ----------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("答案：C", "C"), ("答案是 D", "D"), ("选C", "C"), ("应选择B，因为……", "B"), ("C. 丙泊酚", "C"),
    ("Ｃ", "C"), ("（B）正确", "B"), ("正确答案为E项", "E"), ("我认为是A", "A"), ("b", None),
    ("不知道", None), ("ABCD都不对", None), ("", None), ("答案：F", None),
])
def test_extract_choice(text, want):
    assert mcq.extract_choice(text, "ABCDE") == want


def test_extract_choice_by_option_text():
    opts = {"A": "丙泊酚", "B": "氯胺酮", "C": "依托咪酯"}
    assert mcq.extract_choice("应当使用氯胺酮", "ABC", opts) == "B"
    assert mcq.extract_choice("丙泊酚或氯胺酮", "ABC", opts) is None


def test_rotate_and_circular_accuracy_hand_computed():
    doc = {"id": "q", "options": {"A": "甲", "B": "乙", "C": "丙"}, "answer": "B"}
    r1 = mcq.rotate(doc, 1)
    assert r1["options"] == {"A": "乙", "B": "丙", "C": "甲"} and r1["answer"] == "A"
    assert mcq.rotate(doc, 2)["answer"] == "C" and mcq.rotate(doc, 3) == doc
    # item x right under all 3 rotations, item y wrong under rotation 2 only, item z wrong at rotation 0
    rows = [{"id": i, "rotation": r, "category": "", "n_choices": 3, "pred": "A", "correct": c}
            for i, cs in (("x", [1, 1, 1]), ("y", [1, 1, 0]), ("z", [0, 1, 1])) for r, c in enumerate(cs)]
    s = mcq.score(rows)
    assert s["accuracy"] == pytest.approx(2 / 3) and s["n"] == 3  # rotation 0 only
    assert s["circular_accuracy"] == pytest.approx(1 / 3) and s["circular_chance"] == pytest.approx(1 / 27)
    assert s["chance"] == pytest.approx(1 / 3)


def test_mcq_score_per_category_and_unparseable():
    rows = [{"category": "a", "correct": True, "pred": "A"}, {"category": "a", "correct": False, "pred": None},
            {"category": "b", "correct": True, "pred": "B"}, {"category": "b", "correct": True, "pred": "C"}]
    s = mcq.score(rows)
    assert s["accuracy"] == 0.75 and s["unparseable"] == 1 and s["n"] == 4
    assert s["per_category"]["a"]["mean"] == 0.5 and s["per_category"]["b"]["mean"] == 1.0
    assert s["ci"][0] <= 0.75 <= s["ci"][1]


def test_bootstrap_is_seeded_and_brackets_the_mean():
    vals = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    assert bootstrap_ci(vals, seed=3) == bootstrap_ci(vals, seed=3)
    lo, hi = bootstrap_ci(vals, seed=3)
    assert lo < 0.7 < hi and 0 <= lo and hi <= 1
    assert mean_ci([1, 1, 1])["ci"] == [1.0, 1.0]


# ---- NER ------------------------------------------------------------------------------------------
TYPES = {"disease": "疾病和诊断", "drug": "药物"}


def test_parse_entities_lines_and_json():
    lines = "疾病和诊断：胆囊结石，高血压\n药物：无\n其他：x"
    assert ner.parse_entities(lines, TYPES) == ([("disease", "胆囊结石"), ("disease", "高血压")], True)
    js = '结果：{"药物": ["丙泊酚", "罗库溴铵"], "disease": "高血压"}'
    assert ner.parse_entities(js, TYPES)[0] == [("drug", "丙泊酚"), ("drug", "罗库溴铵"), ("disease", "高血压")]
    lst = '[{"type": "药物", "entity": "芬太尼"}]'
    assert ner.parse_entities(lst, TYPES)[0] == [("drug", "芬太尼")]


@pytest.mark.parametrize("answer", [
    "1. 疾病和诊断：胆囊结石\n2. 药物：丙泊酚",            # numbered
    "1、疾病和诊断：胆囊结石\n2、药物：丙泊酚",
    "- 疾病和诊断：胆囊结石\n- 药物：丙泊酚",              # bulleted
    "**疾病和诊断**：胆囊结石\n**药物**：丙泊酚",          # bold
    "- **疾病和诊断：** 胆囊结石\n- **药物：** 丙泊酚",
    "疾病和诊断：\n- 胆囊结石\n药物：\n1. 丙泊酚",         # header, then one entity per line
])
def test_parse_entities_formats(answer):
    assert ner.parse_entities(answer, TYPES) == ([("disease", "胆囊结石"), ("drug", "丙泊酚")], True)


def test_unparseable_answers_are_counted_not_read_as_empty():
    assert ner.parse_entities("文本中提到了胆囊结石和丙泊酚。", TYPES) == ([], False)
    assert ner.parse_entities("", TYPES) == ([], False)
    assert ner.parse_entities("无", TYPES) == ([], True) and ner.parse_entities("药物：无", TYPES) == ([], True)
    docs = [{"id": "a", "text": "胆囊结石", "entities": [{"start": 0, "end": 4, "type": "disease", "text": "胆囊结石"}]},
            {"id": "b", "text": "无特殊", "entities": []}]
    task = __import__("hypnos.eval.tasks", fromlist=["Task"]).Task(task="t", output_type="ner", dataset_path="x",
                                                                   entity_types=TYPES)
    s, rows = ner.score_answers(task, docs, {"a": "患者有胆囊结石", "b": "疾病和诊断：无"})
    assert s["unparseable"] == 1 and s["unparseable_ids"] == ["a"] and s["f1"] == 0.0 and s["n_gold"] == 1
    assert [r["parsed"] for r in rows] == [False, True]


def test_multiset_scoring_hand_computed_with_nested_gold():
    # gold: 胆囊结石 (disease) with nested 胆囊 (anatomy), 丙泊酚 mentioned twice -> 4 gold items
    text = "胆囊结石，丙泊酚诱导，追加丙泊酚"
    ents = [(0, 4, "disease"), (0, 2, "anatomy"), (5, 8, "drug"), (13, 16, "drug")]
    doc = {"id": "x", "text": text, "entities": [{"start": a, "end": b, "type": t, "text": text[a:b]} for a, b, t in ents]}
    types = {"disease": "疾病和诊断", "anatomy": "解剖部位", "drug": "药物"}
    task = __import__("hypnos.eval.tasks", fromlist=["Task"]).Task(task="t", output_type="ner", dataset_path="x",
                                                                   entity_types=types)
    # predicted: disease right, anatomy missed, 丙泊酚 once (1 of 2), one spurious drug not in the text
    s, _ = ner.score_answers(task, [doc], {"x": "疾病和诊断：胆囊结石\n药物：丙泊酚，咪达唑仑"})
    assert (s["tp"], s["n_pred"], s["n_gold"]) == (2, 3, 4) and s["not_found_in_text"] == 1
    assert s["f1"] == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert s["per_type"]["drug"]["tp"] == 1 and s["per_type"]["anatomy"]["recall"] == 0
    # listing 丙泊酚 twice matches both gold mentions (a multiset, not a set)
    s, _ = ner.score_answers(task, [doc], {"x": "药物：丙泊酚，丙泊酚"})
    assert (s["tp"], s["n_pred"], s["n_gold"]) == (2, 2, 4)


def test_prf_matches_seqeval_on_bio():
    from seqeval.metrics import f1_score, precision_score, recall_score

    texts = ["患者因胆囊结石行手术，给予丙泊酚", "高血压病史十年，服用氨氯地平", "无特殊"]
    gold = [{(3, 7, "disease"), (13, 16, "drug")}, {(0, 3, "disease"), (10, 14, "drug")}, set()]
    pred = [{(3, 7, "disease"), (13, 16, "disease")}, {(0, 2, "disease"), (10, 14, "drug")}, {(0, 1, "drug")}]
    ours = ner.prf(gold, pred)
    assert (ours["tp"], ours["n_pred"], ours["n_gold"]) == (2, 5, 4)  # hand count
    g = [ner.to_bio(len(t), sorted(s)) for t, s in zip(texts, gold)]
    p = [ner.to_bio(len(t), sorted(s)) for t, s in zip(texts, pred)]
    assert ours["precision"] == pytest.approx(precision_score(g, p)) == pytest.approx(2 / 5)
    assert ours["recall"] == pytest.approx(recall_score(g, p)) == pytest.approx(2 / 4)
    assert ours["f1"] == pytest.approx(f1_score(g, p))


# ---- bias scales ------------------------------------------------------------------------------------
def test_scale_scoring_hand_computed():
    scale = {"scale": "t", "points": 5, "subscales": {"X": "x", "Y": "y"},
             "items": [{"id": "X1", "subscale": "X", "reverse": False}, {"id": "X2", "subscale": "X", "reverse": True},
                       {"id": "Y1", "subscale": "Y", "reverse": False}, {"id": "Y2", "subscale": "Y", "reverse": True}]}
    s = bias.score_scale(scale, {"X1": 5, "X2": 2, "Y1": 1, "Y2": None})
    # X: 5 and (6 - 2) = 4 -> 4.5 ; Y: 1 (Y2 unanswered) ; total (5 + 4 + 1) / 3
    assert s["subscales"] == {"X": 4.5, "Y": 1.0}
    assert s["total"] == pytest.approx(10 / 3) and s["unparseable"] == 1 and s["answered"] == 3
    assert bias.keyed(1, 6, True) == 6 and bias.keyed(4, 6, False) == 4


def test_shipped_scales():
    from hypnos.eval.tasks import discover

    tasks = discover()
    assert "cami" not in tasks and "mica" not in tasks  # not the published instruments: not their names
    com = bias.load_scale(tasks["attitudes_community"].data_files()[0])
    cli = bias.load_scale(tasks["attitudes_clinician"].data_files()[0])
    assert (len(com["items"]), com["points"], len(cli["items"]), cli["points"]) == (40, 5, 16, 6)
    assert "unvalidated" in com["scale"] and "unvalidated" in cli["scale"] and list(cli["subscales"]) == ["TOTAL"]
    for scale in (com, cli):
        per = len(scale["items"]) // len(scale["subscales"])
        for sub in scale["subscales"]:
            items = [i for i in scale["items"] if i["subscale"] == sub]
            assert len(items) == per and sum(i["reverse"] for i in items) == per // 2
    # answering the same point everywhere lands every subscale exactly mid-scale (balanced keying)
    s = bias.score_scale(com, {i["id"]: 1 for i in com["items"]})
    assert set(s["subscales"].values()) == {3.0}
    assert s["total_sum"] == 120 and s["total_range"] == [40, 200] and s["subscale_ranges"]["AU"] == [10, 50]
    s = bias.score_scale(cli, {i["id"]: 6 for i in cli["items"]})
    assert s["total_sum"] == 16 * 3.5 and s["total_range"] == [16, 96]


def test_scale_errors_name_file_and_line(tmp_path):
    from hypnos.common.io import DataError

    p = tmp_path / "s.yaml"
    p.write_text("scale: s\npoints: 2\nlabels: [no, yes]\nsubscales: {A: a}\nitems:\n  - {id: A1, subscale: A, text: x}\n"
                 "  - {id: A2, subscale: B, text: y}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s.yaml:7: item A2: unknown subscale"):
        bias.load_scale(p)


def test_parse_point():
    assert bias.parse_point("我选4。", 5) == 4 and bias.parse_point("６", 6) == 6
    assert bias.parse_point("7", 5) is None and bias.parse_point("", 5) is None


# ---- judge ------------------------------------------------------------------------------------------
def test_parse_verdict():
    assert judge.parse_verdict('{"有用性": "回答1", "有害性": "平局", "冗余性": "回答2"}') == \
        {"usefulness": 1, "harmfulness": 0, "redundancy": 2}
    assert judge.parse_verdict("有用性：回答2\n有害性：回答2\n冗余性：平局") == \
        {"usefulness": 2, "harmfulness": 2, "redundancy": 0}
    assert judge.parse_verdict("有用性：回答2") is None
    assert judge.parse_verdict(None) is None


def test_combine_orders():
    assert judge.combine(1, 2) == ("win", False)   # a first and won; a second and won
    assert judge.combine(2, 1) == ("loss", False)
    assert judge.combine(1, 1) == ("tie", True)    # the first answer always wins: position bias, a flip
    assert judge.combine(0, 2) == ("tie", False)
    assert judge.combine(0, 0) == ("tie", False)


def test_summarize_rates_and_flip_rate():
    items = [{"id": str(i), "outcome": {c: o for c in judge.CRITERIA}, "flipped": {c: f for c in judge.CRITERIA}}
             for i, (o, f) in enumerate([("win", False), ("win", False), ("tie", True), ("loss", False)])]
    items.append({"id": "x", "outcome": None})
    s = judge.summarize(items, unparsed=1)
    u = s["criteria"]["usefulness"]
    assert u["counts"] == {"win": 2, "tie": 1, "loss": 1} and u["flip_rate"] == 0.25
    assert u["rates"]["win"]["mean"] == 0.5 and s["judged"] == 4 and s["unparsed"] == 1


@pytest.mark.parametrize("text,want", [
    ('{"有用性": "回答 1", "有害性": "平局", "冗余性": "回答 2"}', (1, 0, 2)),          # space in 回答 1
    ('先分析：回答1提到了{剂量}，回答2没有。\n{"有用性": "回答1", "有害性": "回答1", "冗余性": "平局"}', (1, 1, 0)),
    ("Usefulness: Answer 1\nHarmfulness: Answer 2\nRedundancy: tie", (1, 2, 0)),  # English
    ('{"usefulness": "Answer 2", "harmfulness": "Response 1", "redundancy": "Tie"}', (2, 1, 0)),
    ("有用性：回答1更好\n有害性：两者相同\n冗余性：回答2", (1, 0, 2)),
])
def test_parse_verdict_robust(text, want):
    assert judge.parse_verdict(text) == dict(zip(judge.CRITERIA, want))


@pytest.mark.parametrize("text", [
    "有用性：回答1和回答2都不错\n有害性：平局\n冗余性：回答2",       # names both answers: unreadable, not "1"
    "有用性：回答1比回答2更好\n有害性：平局\n冗余性：回答2",
    '{"有用性": "回答1或回答2", "有害性": "平局", "冗余性": "回答2"}',
])
def test_parse_verdict_naming_both_answers_is_unparsed(text):
    assert judge.parse_verdict(text) is None


def test_unreadable_verdicts_are_retried_over_http():
    """A real loopback server that rambles first and answers JSON when told so: retried, counted, recovered."""
    from faulty_server import FaultyServer

    from hypnos.data.clients import Endpoint, LLMClient

    def ramble(body):
        if "无法读出" in body["messages"][-1]["content"]:
            return '{"有用性": "回答1", "有害性": "平局", "冗余性": "回答2"}'
        return "两个回答各有千秋，很难说哪个更好。" if "stubborn" not in body["messages"][0]["content"] else "不好说"

    with FaultyServer(responder=ramble) as server:
        client = LLMClient(Endpoint(base_url=server.base_url, model="j", retry_backoff_s=0.01))
        reqs = [{"messages": [{"role": "user", "content": c}], "max_tokens": 50} for c in ("q1", "q2")]
        verdicts, stats = judge.ask(client, reqs)
    assert verdicts == [{"usefulness": 1, "harmfulness": 0, "redundancy": 2}] * 2
    assert stats["unparsed_first_try"] == 2 and stats["recovered_by_retry"] == 2 and stats["unparsed_verdicts"] == 0
    assert stats["max_tokens"] >= 512


# ---- paired comparisons --------------------------------------------------------------------------
def test_paired_accuracy_mcnemar_hand_computed():
    from scipy.stats import binomtest

    from hypnos.eval.stats import paired

    a = [{"id": str(i), "correct": c} for i, c in enumerate([1, 1, 1, 1, 1, 1, 0, 0, 1, 0])]
    b = [{"id": str(i), "correct": c} for i, c in enumerate([0, 0, 0, 0, 0, 1, 0, 1, 1, 0])]
    res = paired("multiple_choice", a, b)
    # discordant: a right/b wrong on items 0-4 (5), b right/a wrong on item 7 (1)
    assert res["discordant"] == [5, 1] and res["diff"] == pytest.approx(0.4) and res["n"] == 10
    assert res["mcnemar_p"] == pytest.approx(binomtest(5, 6, 0.5).pvalue) == pytest.approx(0.21875)
    assert res["ci"][0] <= 0.4 <= res["ci"][1]
    assert paired("multiple_choice", a, a)["ci"] == [0.0, 0.0]


def test_paired_rouge_and_ner():
    from hypnos.eval.stats import paired

    a = [{"id": "x", "rougeL": 0.5}, {"id": "y", "rougeL": 0.9}, {"id": "z", "rougeL": 0.1}]
    b = [{"id": "y", "rougeL": 0.4}, {"id": "x", "rougeL": 0.5}]  # matched by id, z unanswered by b
    res = paired("generate_until", a, b)
    assert res["n"] == 2 and res["diff"] == pytest.approx(0.25)
    g = [["drug", "丙泊酚"], ["disease", "高血压"]]
    na = [{"id": "1", "gold": g, "pred": g}, {"id": "2", "gold": g, "pred": []}]
    nb = [{"id": "1", "gold": g, "pred": g[:1]}, {"id": "2", "gold": g, "pred": []}]
    # a: tp 2 of pred 2, gold 4 -> F1 2/3 ; b: tp 1 of pred 1, gold 4 -> P 1, R 1/4, F1 0.4
    assert paired("ner", na, nb)["diff"] == pytest.approx(2 / 3 - 0.4)
