"""The eval and report stages end to end: a tiny local model and the same model behind the real server,
a judge on loopback, a private task, contamination against a training set of the run, resume, and the
report rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from hypnos.common.runner import load_recipe, run_recipe

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _judge(body: dict) -> str:
    """A position-consistent judge: the longer answer is more useful, the shorter less redundant."""
    prompt = body["messages"][-1]["content"]
    a1 = re.search(r"【回答1】\n(.*?)\n\n【回答2】", prompt, re.DOTALL).group(1)
    a2 = re.search(r"【回答2】\n(.*?)\n\n请分别", prompt, re.DOTALL).group(1)
    longer = "平局" if len(a1) == len(a2) else ("回答1" if len(a1) > len(a2) else "回答2")
    shorter = {"回答1": "回答2", "回答2": "回答1", "平局": "平局"}[longer]
    return json.dumps({"有用性": longer, "有害性": "平局", "冗余性": shorter}, ensure_ascii=False)


def _fake_upstream(run_dir, leaked_question: str) -> None:
    """Finished stages the report and the contamination check read: a mix (training data) and an sft."""
    mix = run_dir / "mix"
    mix.mkdir(parents=True)
    rows = [{"id": "t1", "instruction": leaked_question, "output": "答"},
            {"id": "t2", "instruction": "全麻苏醒期躁动的常见原因有哪些？", "output": "疼痛、导尿管刺激等。"}]
    (mix / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (mix / "manifest.json").write_text(json.dumps({
        "stage": "mix", "kind": "mix", "status": "done", "outputs": {"train": "train.jsonl"},
        "counts": {"train": 2, "val": 0}, "timings": {"started": "2026-01-01T00:00:00", "seconds": 1}}))
    sft = run_dir / "sft"
    sft.mkdir()
    (sft / "manifest.json").write_text(json.dumps({
        "stage": "sft", "kind": "sft", "status": "done", "outputs": {"model": "model"},
        "metrics": {"loss_curve": [[1, 3.0], [2, 2.5], [3, 2.2]]}, "timings": {"started": "2026-01-01T00:01:00"}}))


def _other_tiny(tiny_model_dir, out):
    """The tiny model re-initialised with another seed, so the two models answer differently."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, serve_model, tmp_path_factory):
    from faulty_server import FaultyServer

    tmp = tmp_path_factory.mktemp("evalrun")
    other = _other_tiny(tiny_model_dir, tmp / "other")
    (tmp / "tasks" / "mine").mkdir(parents=True)
    (tmp / "tasks" / "mine" / "d.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "question": f"私有问题{i}", "options": {"A": "甲", "B": "乙"},
                            "answer": "AB"[i % 2], "split": "dev" if i == 4 else "test"}, ensure_ascii=False) + "\n"
                for i in range(5)), encoding="utf-8")
    (tmp / "tasks" / "mine" / "mine.yaml").write_text(
        "task: hospital_private\noutput_type: multiple_choice\ndataset_path: d.jsonl\nprivate: true\n"
        "test_split: test\nfewshot_split: dev\n", encoding="utf-8")
    from hypnos.eval.tasks import get_tasks

    leaked = get_tasks(["anesthesia_openqa"])[0].load(limit=1)[0][0]["instruction"]
    with FaultyServer(responder=_judge) as judge, serve_model(other, name="tiny-api") as api_url:
        recipe = {"name": "evtest", "endpoints": {"judge": {"model": "judge", "base_url": judge.base_url},
                                                  "api": {"model": "tiny-api", "base_url": api_url}},
                  "stages": [
                      {"name": "eval", "kind": "eval", "models": {"local": str(tiny_model_dir), "api": "api"},
                       "tasks": ["anesthesia_mcq", "anesthesia_openqa", "anesthesia_cases", "medical_ner", "attitudes_community",
                                 "hospital_private"],
                       "include_paths": [str(tmp / "tasks")], "limit": 3, "max_new_tokens": 8, "batch_size": 2,
                       "num_fewshot": 1, "circular": True,
                       "judge": "judge", "pairs": [["local", "api"]]},
                      {"name": "report", "kind": "report", "eval": "@eval",
                       "notes": ["Tiny random model: numbers are a smoke test."]}]}
        path = tmp / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
        r = load_recipe(path, output_dir=tmp / "runs")
        _fake_upstream(tmp / "runs" / "evtest", leaked)
        manifests = run_recipe(r)
        yield r, manifests, judge
        # resume: one score lost, results gone -> only that (task, model) is recomputed
        out = r.stage_dir("eval")
        kept = out / "scores" / "anesthesia_openqa" / "local.json"
        before = kept.stat().st_mtime_ns
        (out / "scores" / "anesthesia_mcq" / "api.json").unlink()
        (out / "results.json").unlink()
        requests = judge.requests
        again = run_recipe(r, only=["eval"])[0]
        assert kept.stat().st_mtime_ns == before
        assert (out / "scores" / "anesthesia_mcq" / "api.json").exists()
        assert judge.requests == requests  # every judge answer came from the stage's cache
        assert again["usage"]["judge"]["cache_hits"] == again["usage"]["judge"]["requests"] > 0


def test_scores_for_every_model_and_task(evaluated):
    r, manifests, _ = evaluated
    res = json.loads((r.stage_dir("eval") / "results.json").read_text(encoding="utf-8"))
    assert set(res["scores"]) == {"anesthesia_mcq", "anesthesia_openqa", "anesthesia_cases", "medical_ner", "attitudes_community",
                                  "hospital_private"}
    for task, per in res["scores"].items():
        assert set(per) == {"local", "api"}, task
    mcq = res["scores"]["anesthesia_mcq"]
    assert mcq["local"]["unparseable"] == 0 and mcq["local"]["n"] == 3  # log-likelihood always answers
    assert 0 <= mcq["api"]["accuracy"] <= 1 and mcq["api"]["ci"][0] <= mcq["api"]["accuracy"] <= mcq["api"]["ci"][1]
    oqa = res["scores"]["anesthesia_openqa"]["local"]
    assert oqa["max_new_tokens"] == 8 and len(oqa["rougeL_items"]) == 3 and "corpus" in oqa["settings"]["bleu"]
    assert res["scores"]["attitudes_community"]["local"]["answered"] == 40
    pred = r.stage_dir("eval") / "predictions"
    rows = [json.loads(x) for x in (pred / "anesthesia_mcq" / "local.jsonl").read_text(encoding="utf-8").splitlines()]
    assert abs(sum(2.718281828 ** v for v in rows[0]["logprobs"].values()) - 1) < 1e-3
    assert "answer_text" in json.loads((pred / "anesthesia_mcq" / "api.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert manifests[0]["metrics"]["anesthesia_mcq/local"] == round(mcq["local"]["accuracy"], 4)
    # the scoring method is recorded per model x task; few-shot and circular accuracy sit beside accuracy
    assert res["methods"]["anesthesia_mcq"] == {"local": "loglik", "api": "generation"}
    assert mcq["local"]["num_fewshot"] == 1 and 0 <= mcq["local"]["circular_accuracy"] <= mcq["local"]["accuracy"]
    assert len(rows) == 15 and {r["rotation"] for r in rows} == set(range(5))  # 3 items x 5 rotations
    assert rows[0]["id"] == rows[1]["id"] and rows[0]["gold"] != rows[1]["gold"]
    # every model pair gets a paired difference over the same items
    (pair, pm), = res["paired"]["anesthesia_mcq"].items()  # the recipe's model order (YAML sorted: api, local)
    assert pair == "api vs local" and pm["n"] == 3 and "mcnemar_p" in pm and pm["ci"][0] <= pm["diff"] <= pm["ci"][1]
    assert res["paired"]["medical_ner"][pair]["metric"] == "f1"
    assert "private" in res["paired"]["hospital_private"]["note"] and "attitudes_community" not in res["paired"]


def test_private_task_keeps_scores_only(evaluated):
    r, _, _ = evaluated
    out = r.stage_dir("eval")
    assert not (out / "predictions" / "hospital_private").exists()
    assert "私有问题" not in (out / "results.json").read_text(encoding="utf-8")
    assert json.loads((out / "scores" / "hospital_private" / "local.json").read_text())["n"] == 3


def test_judge_both_orders_and_outcomes(evaluated):
    r, _, judge = evaluated
    res = json.loads((r.stage_dir("eval") / "results.json").read_text(encoding="utf-8"))
    j = res["judge"]["anesthesia_cases"]["local vs api"]
    assert j["n"] == 3 and j["unparsed"] == 0
    pred = r.stage_dir("eval") / "predictions" / "anesthesia_cases"
    local = [json.loads(x)["prediction"] for x in (pred / "local.jsonl").read_text(encoding="utf-8").splitlines()]
    api = [json.loads(x)["prediction"] for x in (pred / "api.jsonl").read_text(encoding="utf-8").splitlines()]
    want = ["win" if len(a) > len(b) else "loss" if len(a) < len(b) else "tie" for a, b in zip(local, api)]
    assert [it["outcome"]["usefulness"] for it in j["items"]] == want
    assert j["criteria"]["usefulness"]["flip_rate"] == 0  # this judge has no position bias
    assert j["criteria"]["harmfulness"]["counts"]["tie"] == 3
    assert judge.requests >= 6  # 3 items x 2 orders


def test_contamination_finds_the_leak(evaluated):
    r, _, _ = evaluated
    res = json.loads((r.stage_dir("eval") / "results.json").read_text(encoding="utf-8"))
    sets = res["contamination"]["training_sets"]
    assert set(sets) == {"mix.train"}
    assert sets["mix.train"]["benchmarks"]["anesthesia_openqa"]["train_rows_flagged"] == 1
    assert sets["mix.train"]["benchmarks"]["anesthesia_mcq"]["train_rows_flagged"] == 0


def test_report_files(evaluated):
    r, _, _ = evaluated
    out = r.stage_dir("report")
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data["funnel"][0]["stage"] == "mix" and data["curves"]["sft"] == [3, 2.2]
    assert "Tiny random model: numbers are a smoke test." in data["notes"]
    assert "training curves" in data["plots"] and "anesthesia_cases: judge" in data["plots"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # self-contained


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_report_renders_in_chromium(evaluated):
    r, _, _ = evaluated
    html = r.stage_dir("report") / "report.html"
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--dump-dom", html.resolve().as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    table = re.search(r'<table id="results">(.*?)</table>', dom, re.DOTALL).group(1)
    assert table.count("<tr>") == 3 and "local" in table and "api" in table
    n_plots = len(json.loads((r.stage_dir("report") / "report.json").read_text())["plots"])
    assert dom.count('src="data:image/png;base64,') == n_plots >= 8
    assert '<table id="funnel">' in dom and '<table id="contamination">' in dom


def test_batched_loglik_equals_one_by_one(tiny_model_dir):
    from hypnos.eval.backends import LocalLM

    prompts = ["术前禁食多久？\n答案：", "长一些的问题：全身麻醉诱导期间最常见的不良事件是什么？\n答案：", "短\n答案："]
    choices = [list("ABCD")] * 3
    one = LocalLM(str(tiny_model_dir), batch_size=1).choice_logprobs(prompts, choices)
    many = LocalLM(str(tiny_model_dir), batch_size=3).choice_logprobs(prompts, choices)
    for a, b in zip(one, many):
        assert a == pytest.approx(b, abs=1e-4)


def test_task_limits_override_limit_per_task(tiny_model_dir, tmp_path):
    """``task_limits`` cuts one task (e.g. judged cases, a judge call each) below the stage's ``limit``."""
    from hypnos.common.stage import ConfigError

    stage = {"name": "eval", "kind": "eval", "models": {"local": str(tiny_model_dir)},
             "tasks": ["anesthesia_mcq", "anesthesia_openqa"], "limit": 3, "task_limits": {"anesthesia_openqa": 2},
             "max_new_tokens": 4, "contamination": False}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "tl", "stages": [stage]}, allow_unicode=True), encoding="utf-8")
    r = load_recipe(path, output_dir=tmp_path / "runs")
    run_recipe(r)
    res = json.loads((r.stage_dir("eval") / "results.json").read_text(encoding="utf-8"))
    assert res["tasks"]["anesthesia_mcq"]["n"] == 3 and res["tasks"]["anesthesia_openqa"]["n"] == 2
    assert res["settings"]["task_limits"] == {"anesthesia_openqa": 2}
    stage["task_limits"] = {"anesthesia_cases": 1}
    path.write_text(yaml.safe_dump({"name": "tl", "stages": [stage]}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="task_limits names 'anesthesia_cases'"):
        run_recipe(load_recipe(path, output_dir=tmp_path / "runs2"))
