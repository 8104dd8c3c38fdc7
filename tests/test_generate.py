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

import pytest
from faulty_server import Faults, FaultyServer

from hypnos.common.records import QA
from hypnos.common.runner import load_recipe, run_recipe
from hypnos.data.clients import AnswerCache
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


HAN = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]


def _words(*parts, n: int = 16) -> str:
    """Distinct-looking text from a hash (different requests never write near-duplicates by accident)."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return "".join(HAN[(h[i % 32] * 7 + i * 131) % len(HAN)] for i in range(n))


def responder(body: dict) -> str:
    """Canned answers: JSON items for generation prompts, scores for judge prompts, junk now and then."""
    prompt = body["messages"][-1]["content"]
    h = _h(prompt, body.get("seed"), body.get("model"))
    if "编写" in prompt:
        if h % 6 == 0:
            return "抱歉，我无法完成这个请求。"
        if "单项选择题" in prompt:
            items = [{"question": _words(h, k, "q") + "？", "options": {x: _words(h, k, x, n=4) for x in "ABCDE"},
                      "answer": "ABCDE"[h % 5], "explanation": _words(h, k, "e")} for k in range(2)]
        else:
            items = [{"instruction": _words(h, k, "q") + "？", "input": "", "output": _words(h, k, "a") + "。"}
                     for k in range(2)]
        return "```json\n" + json.dumps({"items": items}, ensure_ascii=False) + "\n```"
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


def _run_generate(tmp_path: Path, url: str, stage: str, model: str = "m", endpoint: str = "") -> dict:
    """One generate stage of generator ``a`` against ``url`` (recipe ``t``); ``stage``/``endpoint``: extra flow fields."""
    _setup(tmp_path, url)
    (tmp_path / "t.yaml").write_text(textwrap.dedent(f"""\
        name: t
        endpoints:
          a: {{model: {model}, base_url: "{url}"{endpoint}}}
        stages:
          - {{name: generate, seeds: seeds.jsonl, generators: [a], {stage}}}
        """), encoding="utf-8")
    [m] = run_recipe(load_recipe(tmp_path / "t.yaml", output_dir=tmp_path / "runs"))
    return m


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
    assert r["meta"]["model"] == "model-" + r["meta"]["generator"] and r["meta"]["prompt_version"] == "v2"
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
        expect = _h(_question(row), "model-" + next(iter(judges))) % 11
        if v["overall"] is not None:
            assert v["overall"] == expect and v["scores"]["harmlessness"] == expect
    assert all(r["meta"]["crossfilter"]["aggregate"] >= 5 for r in kept)
    m = cf_m["metrics"]
    failures = sum(1 for r in dropped if r["meta"]["crossfilter"]["dropped"] == "no_valid_judgement")
    assert sum(m["parse_failures"].values()) == failures
    assert m["keep_rate_per_generator"]["a"]["in"] == 12 and m["self_judging"]["self_judgements"] == 0
    assert m["scores"]["a"]["coherence"]["n"] + m["parse_failures"]["a"] == 12
    assert cf_m["counts"]["dropped"] == sum(cf_m["dropped"].values())


def _question(row: dict) -> str:
    return row["instruction"] if "instruction" in row else row["question"]


def _run_sub(recipe: Path, out: Path) -> subprocess.Popen:
    code = ("import sys; from hypnos.common.runner import load_recipe, run_recipe; "
            "run_recipe(load_recipe(sys.argv[1], output_dir=sys.argv[2]))")
    env = {**os.environ, "HYPNOS_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(recipe), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, cache: Path, lines: int) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if cache.exists() and len(AnswerCache(cache)) >= lines:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    raise AssertionError("the run never got far enough to be killed")


def _cache_keys(stage_dir: Path) -> list[str]:
    return [key for f in sorted((stage_dir / "llm_cache").glob("*.sqlite")) for key, _, _ in AnswerCache(f).rows()]


def test_sigkill_and_resume_loses_nothing_and_resends_nothing(tmp_path):
    with FaultyServer(Faults(delay_s=0.05, rate_500=0.1, seed=5), responder=responder) as server:
        recipe = _setup(tmp_path, server.base_url, target=10)
        runs = tmp_path / "runs"
        _kill_when(_run_sub(recipe, runs), runs / "gen/generate/llm_cache/a.sqlite", 3)
        done_gen = set(_cache_keys(runs / "gen/generate"))
        proc = _run_sub(recipe, runs)
        _kill_when(proc, runs / "gen/crossfilter/llm_cache/b.sqlite", 3)
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


def test_parsing_salvages_neighbours_of_a_broken_item():
    from hypnos.data.parsing import parse_generated

    broken = ('[{"instruction": "丙泊酚注射痛如何预防？", "output": "预先注射利多卡因。"},\n'
              '{"instruction": "为什么说"饱胃"患者要快速顺序诱导？", "output": "减少误吸。"},\n'
              '{"instruction": "术前访视要评估哪些内容？", "output": "病史、气道、用药。"}]')
    assert [it["instruction"][:4] for it in parse_generated(broken)] == ["丙泊酚注", "为什么说", "术前访视"]
    cut = '{"items": [{"instruction": "喉罩置入的禁忌证？", "output": "饱胃。"}, {"instruction": "肌松监测的意义？", "outp'
    assert [it["instruction"] for it in parse_generated(cut)] == ["喉罩置入的禁忌证？"]
    mcq = parse_generated(json.dumps({"items": [{"question": "下列哪项是恶性高热的特效药？", "options": {
        "A": "丹曲林", "B": "新斯的明", "C": "阿托品", "D": "纳洛酮", "E": "氟马西尼"}, "answer": "A",
        "explanation": "丹曲林抑制肌浆网钙释放。"}]}, ensure_ascii=False))[0]
    assert mcq == {"question": "下列哪项是恶性高热的特效药？", "options": {"A": "丹曲林", "B": "新斯的明", "C": "阿托品",
                   "D": "纳洛酮", "E": "氟马西尼"}, "answer": "A", "explanation": "丹曲林抑制肌浆网钙释放。", "kind": "mcq"}


def _self_instruct_responder(body: dict) -> str:
    """Each answer: one near-copy of the first example shown, one new item (MCQ for MCQ prompts)."""
    prompt = body["messages"][-1]["content"]
    first_example = prompt.split("问题：", 1)[1].split("\n", 1)[0]
    h = _h(prompt, body.get("seed"))
    copy = {"instruction": first_example[:-1] + "呢？", "input": "", "output": "重复。"}
    if "单项选择题" in prompt:
        new = {"question": _words(h, "q") + "？", "options": {x: _words(h, x, n=4) for x in "ABCDE"},
               "answer": "C", "explanation": _words(h, "e")}
    else:
        new = {"instruction": _words(h, "q") + "？", "input": "", "output": _words(h, "a") + "。"}
    return json.dumps({"items": [copy, new]}, ensure_ascii=False)


def test_self_instruct_pool_target_counts_unique_items_and_mcq_records(tmp_path):
    with FaultyServer(responder=_self_instruct_responder) as server:
        recipe = textwrap.dedent(f"""\
            name: si
            seed: 1
            endpoints:
              a: {{model: model-a, base_url: "{server.base_url}"}}
            stages:
              - {{name: generate, seeds: seeds.jsonl, generators: [a], target_per_generator: 8, items_per_request: 2,
                  seeds_per_prompt: 3, machine_per_prompt: 1, max_rounds: 10, kinds: [knowledge, mcq]}}
            """)
        _setup(tmp_path, server.base_url)
        (tmp_path / "si.yaml").write_text(recipe, encoding="utf-8")
        [m] = run_recipe(load_recipe(tmp_path / "si.yaml", output_dir=tmp_path / "runs"))
        bodies = list(server.bodies)
    out = tmp_path / "runs/si/generate"
    gen, rejected = _jsonl(out / "generated.jsonl"), _jsonl(out / "rejected.jsonl")
    assert len(gen) == 8 == m["counts"]["generated"]  # the target counts unique kept items
    assert len(rejected) >= 8 and all(r["jaccard"] >= 0.7 for r in rejected)  # every near-copy was refused
    assert {r["duplicate_of"] for r in rejected} & {f"s{i}" for i in range(len(SEEDS))}  # copies of seeds
    # accepted machine items join the pool: later prompts show them as examples
    machine_questions = {_question(r) for r in gen}
    later = [b["messages"][-1]["content"] for b in bodies[4:]]
    assert any(q in p for q in machine_questions for p in later)
    assert any(r["meta"]["machine_ids"] for r in gen)
    mcqs = [r for r in gen if "options" in r]
    assert mcqs and all(set(r["options"]) == set("ABCDE") and r["answer"] == "C" and r["explanation"] for r in mcqs)
    assert all(r["meta"]["generator_id"].endswith("|model-a") for r in gen)
    assert bodies[0]["response_format"]["type"] == "json_schema"  # structured outputs asked for by default


def test_truncated_generation_is_counted_and_not_cached(tmp_path):
    def long_answer(body):
        items = [{"instruction": _words(body.get("seed"), k, "q") + "？", "input": "", "output": _words(k, "a", n=400)}
                 for k in range(3)]
        return json.dumps({"items": items}, ensure_ascii=False)

    with FaultyServer(Faults(enforce_max_tokens=True), responder=long_answer) as server:
        m = _run_generate(tmp_path, server.base_url,
                          "target_per_generator: 2, items_per_request: 3, max_rounds: 1, max_tokens: 400")
        assert [b["max_tokens"] for b in server.bodies] == [400, 800]  # asked again with more room
    g = m["metrics"]["per_generator"]["a"]
    assert g["truncated_answers"] == 1 and m["usage"]["a"]["truncated"] == 1
    assert m["counts"]["generated"] == 1  # the one complete item; the cut one is not kept
    assert len(AnswerCache(tmp_path / "runs/t/generate/llm_cache/a.sqlite")) == 0


def test_a_server_without_structured_outputs_falls_back_to_text(tmp_path):
    with FaultyServer(Faults(reject_response_format=True), responder=responder) as server:
        recipe = load_recipe(_setup(tmp_path, server.base_url, target=4), output_dir=tmp_path / "runs")
        gen_m, cf_m = run_recipe(recipe)
        # each client (2 endpoints x 2 stages, 4 requests in flight each) turns it off after its first 400s
        assert sum("response_format" in b for b in server.bodies) <= 16 < len(server.bodies)
    assert gen_m["counts"]["generated"] == 8
    assert gen_m["metrics"]["per_generator"]["a"]["structured_requests"] == 0
    assert cf_m["usage"]["a"]["structured_outputs"] is False


def test_an_accepted_machine_item_joins_the_pool_so_its_copies_are_refused(tmp_path):
    """Every answer repeats one new item (not a seed): it counts once; later copies are rejected as duplicates
    of the first accepted copy (the pool grows). Removing ``pool.add`` passed every other test."""
    fixed = {"instruction": "全身麻醉苏醒期躁动的常见原因和处理原则有哪些？", "input": "", "output": "疼痛、尿潴留、低氧等，对因处理。"}

    def responder(body: dict) -> str:
        h = _h(body["messages"][-1]["content"], body.get("seed"))
        new = {"instruction": _words(h, "q") + "？", "input": "", "output": _words(h, "a") + "。"}
        return json.dumps({"items": [fixed, new]}, ensure_ascii=False)

    with FaultyServer(responder=responder) as server:
        _setup(tmp_path, server.base_url)
        (tmp_path / "p.yaml").write_text(textwrap.dedent(f"""\
            name: pool
            endpoints:
              a: {{model: model-a, base_url: "{server.base_url}"}}
            stages:
              - {{name: generate, seeds: seeds.jsonl, generators: [a], target_per_generator: 6, items_per_request: 2,
                  max_rounds: 6, kinds: [knowledge]}}
            """), encoding="utf-8")
        run_recipe(load_recipe(tmp_path / "p.yaml", output_dir=tmp_path / "runs"))
    out = tmp_path / "runs/pool/generate"
    gen, rejected = _jsonl(out / "generated.jsonl"), _jsonl(out / "rejected.jsonl")
    firsts = [r for r in gen if r["instruction"] == fixed["instruction"]]
    assert len(gen) == 6 and len(firsts) == 1
    assert rejected and {r["duplicate_of"] for r in rejected} == {firsts[0]["id"]}


# ------------------------------------------------------------------ schema bounds sized to the answer budget
def _worst_case_answer(kind: str, n: int, bounds: dict, text: str) -> str:
    """``n`` items with every string at its maxLength, filled with real clinical Chinese."""
    def fill(k: str) -> str:
        return (text * 50)[: bounds[k][1]]

    if kind == "mcq":
        item = {"question": fill("question"), "options": {x: fill(x) for x in "ABCDE"}, "answer": "A",
                "explanation": fill("explanation")}
    else:
        item = {k: fill(k) for k in ("instruction", "input", "output")}
    return json.dumps({"items": [item] * n}, ensure_ascii=False)


@pytest.mark.parametrize("family", ["smollm2", "llama"])
def test_schema_bounds_fit_max_tokens_with_both_tokenizer_families(family, request):
    """The longest answer the grammar allows fits in max_tokens when tokens_per_char is the tokenizer's own
    (the demo's 135M teacher was cut at max_tokens with the fixed 200/400/800-character bounds: 0 items)."""
    from transformers import AutoTokenizer

    from hypnos.data.parsing import field_bounds

    path = request.getfixturevalue("smollm2_dir" if family == "smollm2" else "llama_sp_dir")
    tok = AutoTokenizer.from_pretrained(str(path))
    text = "".join(q + a for q, a in SEEDS)
    tpc = len(tok(text, add_special_tokens=False)["input_ids"]) / len(text)
    for kind in ("knowledge", "mcq"):
        for n, max_tokens in ((1, 320), (2, 640), (5, 2048)):
            bounds = field_bounds(kind, n, max_tokens, tpc * 1.1)  # 10% margin: fields differ from the mean text
            answer = _worst_case_answer(kind, n, bounds, text)
            used = len(tok(answer, add_special_tokens=False)["input_ids"])
            assert used <= max_tokens, (family, kind, n, max_tokens, used, bounds)
            assert used >= 0.6 * max_tokens, (family, kind, n, used)  # sized to the budget, not far below it
    assert field_bounds("knowledge", 2, 640)["output"] == (2, 800)  # not sized without tokens_per_char


def test_a_budget_too_small_for_the_items_fails_before_any_request():
    with pytest.raises(ValueError, match=r"max_tokens 200 leaves 18 characters for each knowledge item \(output <= 10"):
        Config(seeds="s.jsonl", generators=["a"], items_per_request=3, max_tokens=200, tokens_per_char=2.0)
    with pytest.raises(ValueError, match=r"max_tokens 16 leaves 0 characters"):  # a negative budget, said as 0
        Config(seeds="s.jsonl", generators=["a"], items_per_request=1, max_tokens=16, tokens_per_char=2.0)
    Config(seeds="s.jsonl", generators=["a"], items_per_request=1, max_tokens=240, tokens_per_char=2.0)
    Config(seeds="s.jsonl", generators=["a"], items_per_request=3, max_tokens=200, structured=False)  # no schema
    Config(seeds="s.jsonl", generators=["a"], items_per_request=3, max_tokens=200)  # fixed bounds: not sized


def test_sized_bounds_by_hand_and_a_question_floor():
    from hypnos.data.parsing import field_bounds

    # (640 - 16 - 2 x 24) / (2 x 2.0) = 144 characters per item of the 1,400 the fixed bounds allow
    assert field_bounds("case", 2, 640, 2.0) == {"instruction": (4, 20), "input": (0, 41), "output": (2, 82)}
    with pytest.raises(ValueError, match=r"instruction <= 11"):  # output 45 passes, the question floor (12) fails
        field_bounds("knowledge", 1, 200, 2.0)


def test_smollm2_teacher_yields_items_within_its_budget(tmp_path, smollm2_dir, serve_model):
    """The demo's teacher through `hypnos serve` with structured outputs: items parse and nothing is cut."""
    with serve_model(smollm2_dir, name="smollm2-135m-instruct") as url:
        m = _run_generate(tmp_path, url, "target_per_generator: 1, items_per_request: 1, max_rounds: 1, "
                          "max_tokens: 240, tokens_per_char: 2.0, kinds: [knowledge]",
                          model="smollm2-135m-instruct", endpoint=", structured_outputs: json_schema")
    g = m["metrics"]["per_generator"]["a"]
    assert g["truncated_answers"] == 0 and m["usage"]["a"]["truncated"] == 0, g
    assert m["usage"]["a"]["http_requests"] == 1, m["usage"]  # fitted the first time: no retry with more room
    assert m["counts"]["generated"] == 1, m["counts"]
    assert m["metrics"]["field_max_chars"]["knowledge"] == {"instruction": 14, "input": 28, "output": 57}
    assert 0 <= g["items_at_length_cap"] <= g["items"]


def test_sized_answers_that_reach_a_bound_are_counted(tmp_path):
    """An answer filling its field to the schema's maxLength may have been cut by the bound: counted."""
    def at_bound(body):
        props = body["response_format"]["json_schema"]["schema"]["properties"]["items"]["items"]["properties"]
        k = body.get("seed", 0)
        full = {"instruction": _words(k, "q", n=props["instruction"]["maxLength"] - 1) + "？", "input": "",
                "output": _words(k, "a", n=props["output"]["maxLength"])}
        short = {"instruction": _words(k, "q2", n=10) + "？", "input": "", "output": _words(k, "a2", n=10)}
        return json.dumps({"items": [full, short]}, ensure_ascii=False)

    with FaultyServer(responder=at_bound) as server:
        m = _run_generate(tmp_path, server.base_url, "target_per_generator: 2, items_per_request: 2, max_rounds: 1, "
                          "max_tokens: 640, tokens_per_char: 2.0, kinds: [knowledge]",
                          endpoint=", structured_outputs: json_schema")
    g = m["metrics"]["per_generator"]["a"]
    assert g["items"] == 2 and g["items_at_length_cap"] == 1, g
