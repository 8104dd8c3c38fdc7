"""lm-evaluation-harness task files: read with local data, refused by key when unsupported, exported back.

Before: discovery wanted a line starting ``task:`` and silently skipped the rest, lm-eval keys were
rejected, and an index target (``{{['A','B','C','D'].index(answer)}}``) compared "0" with "A" (oracle 0%).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hypnos.cli import app
from hypnos.eval import mcq
from hypnos.eval.tasks import TaskError, discover, get_tasks

QUESTIONS = [("术前禁食固体食物至少多久？", ["2小时", "4小时", "6小时", "12小时"], "C"),
             ("哪种药物是非去极化肌松药？", ["琥珀胆碱", "罗库溴铵", "新斯的明", "阿托品"], "B"),
             ("局麻药中毒首先表现为？", ["中枢神经系统症状", "心律失常", "皮疹", "低血糖"], "A"),
             ("丙泊酚的溶剂是？", ["水", "乙醇", "脂肪乳", "生理盐水"], "C")]
COMMON = """dataset_path: json
output_type: multiple_choice
doc_to_text: "{{question}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\n答案："
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{['A','B','C','D'].index(answer)}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _write_task(root, extra: str = "", name: str = "mini_mcq"):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    (folder / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:3]),
                                       encoding="utf-8")
    (folder / "dev.jsonl").write_text(json.dumps(rows[3], ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "_common.yaml").write_text(COMMON, encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        f"include: _common.yaml\ntask: {name}\ndataset_kwargs:\n  data_files:\n    test: test.jsonl\n"
        f"    dev: dev.jsonl\ntest_split: test\nfewshot_split: dev\n{extra}", encoding="utf-8")
    return folder


def test_index_target_oracle_scores_one(tmp_path):
    _write_task(tmp_path / "tasks")
    t = get_tasks(["mini_mcq"], [tmp_path / "tasks"])[0]
    docs = t.load()[0]
    assert [mcq.gold_of(t, d, mcq.choices_of(t, d)) for d in docs] == ["C", "B", "A"]
    assert t.hook("doc_to_text")(docs[0]).endswith("D. 12小时\n答案：")
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"id": d["id"], "prediction": a}) + "\n" for d, a in zip(docs, "CBA")),
                     encoding="utf-8")
    res = CliRunner().invoke(app, ["eval", "score", "mini_mcq", str(preds), "--include-path", str(tmp_path / "tasks")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["accuracy"] == 1.0


def test_fewshot_split_feeds_the_examples(tmp_path):
    _write_task(tmp_path / "tasks", extra="num_fewshot: 1\n")
    t = get_tasks(["mini_mcq"], [tmp_path / "tasks"])[0]
    assert t.num_fewshot == 1 and t.fewshot_path.endswith("dev.jsonl")
    doc = t.load()[0][0]
    prefix = mcq.fewshot_prefix(t, doc, t.load_fewshot(), 1, seed=0)
    assert prefix.startswith("丙泊酚的溶剂是？") and prefix.endswith("答案： C\n\n")


@pytest.mark.parametrize("extra,key", [
    ("process_results: !function utils.process_results\n", "process_results"),
    ("filter_list:\n  - name: x\n", "filter_list"),
    ("fewshot_config:\n  sampler: first_n\n", "fewshot_config"),
])
def test_unsupported_key_is_an_error_naming_it(tmp_path, extra, key):
    folder = _write_task(tmp_path / "tasks", extra=extra)
    (folder / "utils.py").write_text("def process_results(doc, results):\n    return {}\n", encoding="utf-8")
    with pytest.raises(TaskError, match=rf"mini_mcq.yaml: unsupported lm-eval key\(s\) \['{key}'\]"):
        discover([tmp_path / "tasks"])


def test_unsupported_values_are_errors(tmp_path):
    folder = _write_task(tmp_path / "tasks")
    y = folder / "mini_mcq.yaml"
    y.write_text(y.read_text(encoding="utf-8").replace("include: _common.yaml\n", "include: _common.yaml\n"
                                                       "dataset_path: haonan-li/cmmlu\n"), encoding="utf-8")
    with pytest.raises(TaskError, match="hub dataset"):
        discover([tmp_path / "tasks"])
    y.write_text(y.read_text(encoding="utf-8").replace("dataset_path: haonan-li/cmmlu\n", "metric_list:\n"
                                                       "  - metric: acc_norm\n"), encoding="utf-8")
    with pytest.raises(TaskError, match="acc_norm"):
        discover([tmp_path / "tasks"])


def test_a_yaml_that_is_not_a_task_is_not_skipped_silently(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "group.yaml").write_text("group: medical\n", encoding="utf-8")
    with pytest.raises(TaskError, match="group.yaml: neither a task"):
        discover([tmp_path / "t"])


def test_export_round_trips_through_our_lm_eval_reader(tmp_path):
    res = CliRunner().invoke(app, ["eval", "export-lm-eval", "anesthesia_mcq", str(tmp_path / "out"), "--limit", "4"])
    assert res.exit_code == 0, res.output
    orig = get_tasks(["anesthesia_mcq"])[0]
    back = get_tasks(["anesthesia_mcq"], [tmp_path / "out"])[0]  # the exported YAML overrides the built-in
    assert back.dataset_format == "json"
    for d, e in zip(orig.load(limit=4)[0], back.load()[0]):
        assert orig.hook("doc_to_text")(d) == back.hook("doc_to_text")(e)
        assert mcq.choices_of(back, e) == mcq.choices_of(orig, d)
        assert mcq.gold_of(back, e, mcq.choices_of(back, e)) == d["answer"]
    private = tmp_path / "p"
    (private / "x").mkdir(parents=True)
    (private / "x" / "x.yaml").write_text("task: secret\noutput_type: multiple_choice\ndataset_path: d.jsonl\n"
                                          "private: true\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["eval", "export-lm-eval", "secret", str(tmp_path / "o2"), "--include-path",
                                   str(private)])
    assert res.exit_code == 2 and "private" in res.output


def test_export_loads_in_real_lm_eval(tmp_path):
    """The exported task as lm-eval itself reads it: same prompts, choices and gold indices."""
    pytest.importorskip("lm_eval.tasks")
    from lm_eval.tasks import TaskManager

    CliRunner().invoke(app, ["eval", "export-lm-eval", "anesthesia_mcq", str(tmp_path / "out"), "--limit", "3"])
    task = TaskManager(include_path=str(tmp_path / "out")).load_task_or_group(["anesthesia_mcq"])["anesthesia_mcq"]
    orig = get_tasks(["anesthesia_mcq"])[0]
    docs = list(task.test_docs())
    for d, ours in zip(docs, orig.load(limit=3)[0]):
        assert task.doc_to_text(d) == orig.hook("doc_to_text")(ours)
        assert task.doc_to_choice(d)[task.doc_to_target(d)] == ours["answer"]


def test_we_read_an_lm_eval_task_as_lm_eval_does(tmp_path):
    """Our reading of an lm-eval YAML (include, index target, choices) against lm-eval's own."""
    pytest.importorskip("lm_eval.tasks")
    from lm_eval.tasks import TaskManager

    folder = _write_task(tmp_path / "tasks")
    y = folder / "mini_mcq.yaml"  # absolute data_files: lm-eval resolves relative ones against the CWD
    y.write_text(y.read_text(encoding="utf-8").replace("test: test.jsonl", f"test: {folder / 'test.jsonl'}")
                 .replace("dev: dev.jsonl", f"dev: {folder / 'dev.jsonl'}"), encoding="utf-8")
    theirs = TaskManager(include_path=str(tmp_path / "tasks")).load_task_or_group(["mini_mcq"])["mini_mcq"]
    ours = get_tasks(["mini_mcq"], [tmp_path / "tasks"])[0]
    for d, o in zip(list(theirs.test_docs()), ours.load()[0]):
        assert theirs.doc_to_text(d) == ours.hook("doc_to_text")(o)
        assert theirs.doc_to_choice(d)[theirs.doc_to_target(d)] == mcq.gold_of(ours, o, mcq.choices_of(ours, o))
