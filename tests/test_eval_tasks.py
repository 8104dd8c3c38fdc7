"""Task discovery and loading: YAML + hooks, include paths, errors with file:line, the real data sets."""

from __future__ import annotations

import pytest

from hypnos.eval.tasks import TaskError, discover, expand, get_tasks, load_task

SHARED = expand("${HYPNOS_DATA}", expand(".", __import__("pathlib").Path(".")))
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared data (HYPNOS_DATA) not present")


def test_builtin_tasks_found_by_scanning():
    tasks = discover()
    for name in ("anesthesia_mcq", "anesthesia_openqa", "anesthesia_cases", "medical_ner", "cmexam",
                 "cmexam_anesthesia", "cmmlu_medical", "huatuo_anesthesia", "zhongjing_huatuo26m", "ccks2019_ner",
                 "cmeee_ner", "attitudes_community", "attitudes_clinician"):
        assert name in tasks
    assert "attitudes_community_items" not in tasks and "cami" not in tasks  # a questionnaire YAML is data, not a task


def test_function_hook_and_split():
    t = get_tasks(["anesthesia_mcq"])[0]
    docs, report = t.load()
    assert len(docs) == sum(1 for d in docs if d["split"] == "test") and report.rejected == []
    prompt = t.hook("doc_to_text")(docs[0])
    assert prompt.endswith("答案：") and "A. " in prompt and docs[0]["question"].strip() in prompt
    assert t.hook("doc_to_choice")(docs[0]) == list("ABCDE")
    assert t.hook("doc_to_target")(docs[0]) == docs[0]["answer"]
    assert len(t.load(limit=3)[0]) == 3


def test_include_path_template_and_private(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.jsonl").write_text(
        '{"id": "q1", "question": "术前禁食多久？", "options": {"A": "2小时", "B": "6小时"}, "answer": "B"}\n',
        encoding="utf-8")
    (tmp_path / "mine" / "mine.yaml").write_text(
        "task: my_private\noutput_type: multiple_choice\ndataset_path: data.jsonl\nprivate: true\n"
        'doc_to_text: "{{ question }}\\n答案："\n', encoding="utf-8")
    t = get_tasks(["my_private"], [tmp_path])[0]
    assert t.private and t.hook("doc_to_text")(t.load()[0][0]) == "术前禁食多久？\n答案："


def test_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: x\noutput_type: multiple_choice\ndataset_path: d.jsonl\nprompt: oops\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"bad.yaml:4: prompt: unknown key"):
        load_task(bad)
    fn = tmp_path / "fn.yaml"
    fn.write_text("task: y\noutput_type: ner\ndataset_path: d.jsonl\ndoc_to_text: !function nothere.f\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"fn.yaml:4: !function nothere.f"):
        load_task(fn)
    with pytest.raises(TaskError, match="unknown task"):
        get_tasks(["no_such_task"])


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    from hypnos.common.io import DataError

    monkeypatch.setenv("HYPNOS_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"cmexam_val_anesthesia.csv: data of task 'cmexam_anesthesia' not found"):
        get_tasks(["cmexam_anesthesia"])[0].load()


@needs_shared
def test_real_sets_load_through_importers(tmp_path):
    t = {x.task: x for x in get_tasks(["cmexam_anesthesia", "cmmlu_medical", "ccks2019_ner", "zhongjing_anesthesia"])}
    docs, rep = t["cmexam_anesthesia"].load(quarantine_dir=tmp_path)
    # 77 rows, of which the multiple-answer ones are skipped, counted and quarantined (never silently)
    assert len(docs) + len(rep.rejected) == 77 and len(rep.rejected) > 0
    assert (tmp_path / "cmexam_val_anesthesia.csv.quarantine.jsonl").exists()
    cm, _ = t["cmmlu_medical"].load()
    assert len({d["category"] for d in cm}) == 6
    assert "答案：" in t["cmmlu_medical"].hook("doc_to_text")(cm[0])
    ner, _ = t["ccks2019_ner"].load(limit=5)
    assert ner[0]["entities"] and {e["type"] for d in ner for e in d["entities"]} <= set(t["ccks2019_ner"].entity_types)
    assert len(t["zhongjing_anesthesia"].load()[0]) == 8


def test_cache_key_covers_every_file_a_task_reads(tmp_path):
    """Editing the task YAML, an included YAML, utils.py or a prompt template changes the stage fingerprint."""
    import yaml

    from hypnos.common.runner import load_recipe, stage_inputs
    from hypnos.eval.tasks import PROMPTS

    folder = tmp_path / "tasks" / "mine"
    folder.mkdir(parents=True)
    (folder / "d.jsonl").write_text('{"id": "q1", "text": "丙泊酚", "entities": []}\n', encoding="utf-8")
    (folder / "_base.yaml").write_text("output_type: ner\n", encoding="utf-8")
    (folder / "utils.py").write_text("def doc_to_text(doc):\n    return doc['text']\n", encoding="utf-8")
    (folder / "mine.yaml").write_text("task: mine\noutput_type: ner\ndataset_path: d.jsonl\n"
                                      "doc_to_text: !function utils.doc_to_text\n", encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "stages": [{"name": "eval", "kind": "eval",
                                      "models": {"m": "smollm2-135m-instruct"}, "tasks": ["mine", "attitudes_community"],
                                      "include_paths": [str(tmp_path / "tasks")]}]}), encoding="utf-8")
    r = load_recipe(recipe, output_dir=tmp_path / "runs")
    files = set(stage_inputs(r, r.stages[0]))
    for f in (folder / "mine.yaml", folder / "utils.py", folder / "d.jsonl", PROMPTS / "ner_v1.jinja",
              PROMPTS / "likert_v1.jinja"):
        assert f"file:{f}" in files, f
    before = stage_inputs(r, r.stages[0])
    (folder / "utils.py").write_text("def doc_to_text(doc):\n    return '抽取：' + doc['text']\n", encoding="utf-8")
    assert stage_inputs(r, r.stages[0]) != before
