"""Generate + crossfilter through the recipe runner, against the fault-injecting server and real `hypnos serve`.

The fault-injecting server answers generation prompts with canned JSON items and judge prompts with
canned scores, both derived from a hash of the request, so runs are reproducible and checkable.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from faulty_server import Faults, FaultyServer

from hypnos.common.records import QA
from hypnos.common.runner import load_recipe, run_recipe
from hypnos.data.generate import Config, build_request

SEEDS = [
    ("全身麻醉诱导时丙泊酚的常用剂量是多少？", "成人1.5-2.5mg/kg，老年人酌情减量。"),
    ("椎管内麻醉后出现低血压应如何处理？", "补液、调整体位，必要时给予血管活性药物。"),
    ("术前禁食禁饮的时间要求是什么？", "固体食物6-8小时，清饮料2小时。"),
    ("什么是恶性高热？", "一种由挥发性麻醉药或琥珀胆碱诱发的骨骼肌高代谢危象。"),
    ("困难气道的预测指标有哪些？", "Mallampati分级、甲颏距离、张口度、颈部活动度等。"),
    ("术后恶心呕吐的高危因素有哪些？", "女性、不吸烟、晕动病史、术后使用阿片类药物。"),
    ("局麻药中毒的早期表现有哪些？", "口周麻木、耳鸣、头晕，严重时惊厥和心律失常。"),
    ("喉罩的禁忌证有哪些？", "饱胃、反流误吸高风险、气道阻力高的患者。"),
]


def _h(*parts) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def responder(body: dict) -> str:
    """Canned answers: JSON items for generation prompts, scores for judge prompts, junk now and then."""
    prompt = body["messages"][-1]["content"]
    h = _h(prompt, body.get("seed"), body.get("model"))
    if "编写" in prompt:
        if h % 6 == 0:
            return "抱歉，我无法完成这个请求。"
        items = [{"instruction": f"{body['model']}第{h % 9973}号问题之{k}：麻醉后监测要点是什么？",
                  "input": "", "output": f"监测要点{k}：血压、心率、血氧饱和度。", "type": "知识问答"}
                 for k in range(2)]
        return "```json\n" + json.dumps(items, ensure_ascii=False) + "\n```"
    q = prompt.split("【问题】")[1].split("\n")[0]
    s = _h(q, body.get("model")) % 11
    if _h(q, "junk", body.get("model")) % 8 == 0:
        return "这个回答还可以。"  # no scores: a parse failure
    return "\n".join(f"{n}：{s}" for n in ("连贯性", "专业性", "有用性", "无害性", "友好性")) + "\n理由：测试。"


RECIPE = """\
    name: gen
    seed: 3
    endpoints:
      a: {{model: model-a, base_url: "{url}", max_concurrency: 4, max_retries: 8}}
      b: {{model: model-b, base_url: "{url}", max_concurrency: 4, max_retries: 8}}
    stages:
      - name: generate
        seeds: seeds.jsonl
        generators: [a, b]
        target_per_generator: {target}
        items_per_request: 2
        max_rounds: 6
      - name: crossfilter
        input: "@generate"
        judges: [a, b]
        threshold: 5
    """


def _setup(tmp_path: Path, url: str, target: int = 12) -> Path:
    (tmp_path / "seeds.jsonl").write_text("".join(
        json.dumps({"id": f"s{i}", "instruction": q, "output": a, "category": "general"}, ensure_ascii=False) + "\n"
        for i, (q, a) in enumerate(SEEDS)), encoding="utf-8")
    p = tmp_path / "recipe.yaml"
    p.write_text(textwrap.dedent(RECIPE.format(url=url, target=target)), encoding="utf-8")
    return p


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]


def test_requests_are_deterministic():
    cfg = Config(seeds="x", generators=["a"], seeds_per_prompt=2)
    seeds = [QA(id=f"s{i}", instruction=q, output=a) for i, (q, a) in enumerate(SEEDS)]
    r1, r2 = build_request(cfg, seeds, "a", 0, 1, 0), build_request(cfg, seeds, "a", 0, 1, 0)
    assert r1 == r2 and r1["seed"] == r1["_meta"]["request_seed"]
    assert build_request(cfg, seeds, "a", 0, 2, 0)["seed"] != r1["seed"]
    assert build_request(cfg, seeds, "b", 0, 1, 0)["seed"] != r1["seed"]


def test_generate_and_crossfilter_with_faults(tmp_path):
    faults = Faults(rate_429=0.1, rate_500=0.1, rate_malformed=0.05, rate_empty=0.05, seed=2)
    with FaultyServer(faults, responder=responder) as server:
        recipe = load_recipe(_setup(tmp_path, server.base_url), output_dir=tmp_path / "runs")
        gen_m, cf_m = run_recipe(recipe)
        assert sum(server.faults_sent.values()) > 0
    out = tmp_path / "runs/gen"
    generated = _jsonl(out / "generate/generated.jsonl")
    assert gen_m["counts"]["generated"] == 24 == len(generated)
    assert {r["meta"]["generator"] for r in generated} == {"a", "b"}
    r = generated[0]
    assert r["meta"]["model"] == "model-" + r["meta"]["generator"] and r["meta"]["prompt_version"] == "v1"
    assert len(r["meta"]["seed_ids"]) == 3 and r["meta"]["usage"]["completion_tokens"] > 0
    failed = _jsonl(out / "generate/failed.jsonl")
    assert failed and all(f["reason"] and f["raw"] == "抱歉，我无法完成这个请求。" for f in failed)  # faults all retried
    usage = gen_m["usage"]
    assert usage["a"]["errors"] == usage["b"]["errors"] == 0 and usage["a"]["retries"] + usage["b"]["retries"] > 0

    kept, dropped = _jsonl(out / "crossfilter/kept.jsonl"), _jsonl(out / "crossfilter/dropped.jsonl")
    assert len(kept) + len(dropped) == 24 and kept and dropped
    for row in kept + dropped:
        judges = row["meta"]["crossfilter"]["judges"]
        assert list(judges) == [{"a": "b", "b": "a"}[row["meta"]["generator"]]]  # never its own generator
        v = next(iter(judges.values()))
        assert v["raw"] and not v["self_judged"]
        expect = _h(row["instruction"], "model-" + next(iter(judges))) % 11
        if v["overall"] is not None:
            assert v["overall"] == expect and v["scores"]["harmlessness"] == expect
    assert all(r["meta"]["crossfilter"]["aggregate"] >= 5 for r in kept)
    m = cf_m["metrics"]
    failures = sum(1 for r in dropped if r["meta"]["crossfilter"]["dropped"] == "no_valid_judgement")
    assert sum(m["parse_failures"].values()) == failures
    assert m["keep_rate_per_generator"]["a"]["in"] == 12 and m["self_judging"]["self_judgements"] == 0
    assert m["scores"]["a"]["coherence"]["n"] + m["parse_failures"]["a"] == 12
    assert cf_m["counts"]["dropped"] == sum(cf_m["dropped"].values())


def _run_sub(recipe: Path, out: Path) -> subprocess.Popen:
    code = ("import sys; from hypnos.common.runner import load_recipe, run_recipe; "
            "run_recipe(load_recipe(sys.argv[1], output_dir=sys.argv[2]))")
    env = {**os.environ, "HYPNOS_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(recipe), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, cache: Path, lines: int) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if cache.exists() and cache.read_bytes().count(b"\n") >= lines:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    raise AssertionError("the run never got far enough to be killed")


def _cache_keys(stage_dir: Path) -> list[str]:
    return [json.loads(x)["key"] for f in sorted((stage_dir / "llm_cache").glob("*.jsonl"))
            for x in f.read_text(encoding="utf-8").splitlines() if x.endswith("}")]


def test_sigkill_and_resume_loses_nothing_and_resends_nothing(tmp_path):
    with FaultyServer(Faults(delay_s=0.05, rate_500=0.1, seed=5), responder=responder) as server:
        recipe = _setup(tmp_path, server.base_url, target=10)
        runs = tmp_path / "runs"
        _kill_when(_run_sub(recipe, runs), runs / "gen/generate/llm_cache/a.jsonl", 3)
        done_gen = set(_cache_keys(runs / "gen/generate"))
        proc = _run_sub(recipe, runs)
        _kill_when(proc, runs / "gen/crossfilter/llm_cache/b.jsonl", 3)
        done_cf = set(_cache_keys(runs / "gen/crossfilter"))
        proc = _run_sub(recipe, runs)
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
        answered_after_resume = dict(server.answered)
        bodies = list(server.bodies)

        server.reset()  # the same recipe without interruptions, into another folder
        clean = _run_sub(recipe, tmp_path / "clean")
        assert clean.wait(timeout=120) == 0, clean.stderr.read().decode()[-2000:]

    assert len(done_gen) >= 3 and len(done_cf) >= 3
    for stage in ("generate", "crossfilter"):
        keys = _cache_keys(runs / "gen" / stage)
        assert len(keys) == len(set(keys)), "an answered request was sent and stored twice"
    # every (prompt, seed, model) the server answered successfully was answered once, except requests that
    # were in flight at a kill (answered by the server, never stored by the killed client)
    seen: dict[tuple, int] = {}
    for b in bodies:
        k = (b["messages"][-1]["content"], b.get("seed"), b["model"])
        seen[k] = seen.get(k, 0) + 1
    assert sum(answered_after_resume.values()) <= len(seen) + 2 * 8
    for name in ("generate/generated.jsonl", "generate/failed.jsonl", "crossfilter/kept.jsonl",
                 "crossfilter/dropped.jsonl"):
        assert (runs / "gen" / name).read_text() == (tmp_path / "clean/gen" / name).read_text(), name
    manifest = json.loads((runs / "gen/crossfilter/manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["resumed"]
