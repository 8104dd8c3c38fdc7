"""Decontamination: 13-character overlaps with benchmark items, after normalisation."""

import json
import textwrap

from hypnos.common.runner import load_recipe, run_recipe
from hypnos.data.decontaminate import BenchIndex, overlap_report

Q = "男性，68岁，拟在全身麻醉下行腹腔镜胆囊切除术，术前评估最需要关注的是"


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _bench(tmp_path):
    mcq = _write(tmp_path / "mcq.jsonl", [{"id": "m1", "question": Q, "answer": "A",
                                            "options": {"A": "心肺功能", "B": "身高", "C": "血型", "D": "职业"}}])
    qa = _write(tmp_path / "openqa.jsonl", [{"id": "q1", "instruction": "简述恶性高热的早期临床表现及处理原则。",
                                             "output": "呼末二氧化碳升高……"}])
    return mcq, qa


def test_match_survives_punctuation_width_and_spacing(tmp_path):
    index = BenchIndex({"mcq": _bench(tmp_path)[0]}, ngram=13)
    pasted = "练习题：男性, ６８岁, 拟在全身麻醉下 行腹腔镜胆囊切除术， 术前评估最需要关注的是……"
    assert index.match(pasted)[:3] == ("mcq", "m1", "stem")
    # shares only short common phrases (全身麻醉下, 胆囊切除术): not contamination
    assert index.match("腹腔镜胆囊切除术通常在全身麻醉下进行，术后注意镇痛。") is None
    # shorter than one n-gram after normalisation: never matched
    assert index.match("恶性高热") is None


def test_overlap_report_counts_per_benchmark(tmp_path):
    mcq, qa = _bench(tmp_path)
    train = _write(tmp_path / "train.jsonl", [
        {"id": "t1", "instruction": "请回答：" + Q, "output": "心肺功能"},
        {"id": "t2", "instruction": "术后镇痛有哪些方法？", "output": "简述恶性高热的早期临床表现及处理原则：见教材。"},
        {"id": "t3", "instruction": "术后镇痛有哪些方法？", "output": "静脉自控镇痛、神经阻滞。"},
    ])
    rep = overlap_report([train], [mcq, qa])
    assert rep["train_rows"] == 3 and rep["flagged_rows"] == 2
    assert rep["benchmarks"]["mcq"]["train_rows_flagged"] == 1
    assert rep["benchmarks"]["openqa"]["examples"][0]["train_id"] == "t2"  # found in the answer
    assert overlap_report([train], [mcq, qa], with_answer=False)["flagged_rows"] == 1


def test_one_shared_phrase_is_not_contamination(tmp_path):
    """The old rule flagged any shared 13-character n-gram: an unrelated case sharing a common phrase."""
    case = "女性，45岁，拟在全身麻醉下行腹腔镜胆囊切除术，既往有支气管哮喘病史十年，近一月无发作，术前如何评估气道高反应性并选择诱导药物"
    bench = _write(tmp_path / "cases.jsonl", [{"id": "c1", "instruction": case, "output": "评估哮喘控制情况。"}])
    index = BenchIndex({"cases": bench}, ngram=13)
    other = "男性，70岁，拟在全身麻醉下行腹腔镜胆囊切除术，合并冠心病，术前需要完善哪些心脏检查？"
    assert index.match(other) is None
    assert index.match("请分析：" + case)[:3] == ("cases", "c1", "stem")


def test_short_stems_and_options_without_letters(tmp_path):
    """14 of 77 CMExam anesthesia stems are shorter than 13 characters; options were indexed as "A丹曲林"."""
    bench = _write(tmp_path / "short.jsonl", [{"id": "s1", "question": "恶性高热的首选治疗药物是", "answer": "A",
                                               "options": {"A": "丹曲林", "B": "新斯的明", "C": "阿托品", "D": "纳洛酮"}}])
    index = BenchIndex({"short": bench}, ngram=13)
    assert index.short["short"] == 1
    assert index.match("恶性高热的首选治疗药物是什么？答：丹曲林。")[:3] == ("short", "s1", "short_stem+answer")
    assert index.match("恶性高热的首选治疗药物是？选项：新斯的明、阿托品、纳洛酮")[2] == "short_stem+options"
    assert index.match("恶性高热的首选治疗药物是什么？请查阅指南。") is None  # the stem alone: no evidence
    assert index.match("丹曲林用于治疗恶性高热。") is None


def test_stage_drops_overlapping_rows(tmp_path):
    _bench(tmp_path)
    _write(tmp_path / "train.jsonl", [{"id": "t1", "instruction": Q + "？", "output": "A"},
                                      {"id": "t2", "instruction": "什么是困难气道？", "output": "面罩通气或插管困难。"}])
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""\
        name: c
        stages:
          - name: decontaminate
            input: train.jsonl
            benchmarks: [mcq.jsonl, openqa.jsonl]
        """), encoding="utf-8")
    [m] = run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
    assert m["counts"] == {"in": 2, "kept": 1, "dropped": 1} and m["dropped"] == {"overlaps_mcq": 1}
    out = tmp_path / "runs" / "c" / "decontaminate"
    dropped = json.loads((out / "dropped.jsonl").read_text())
    assert dropped["contamination"]["bench_id"] == "m1"
