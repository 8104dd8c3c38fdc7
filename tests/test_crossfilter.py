"""Crossfilter: parsing judge answers (canned strings), aggregation, agreement, and two real `hypnos serve`s."""

import json
import math
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from hypnos.common.runner import load_recipe, run_recipe
from hypnos.common.stage import ConfigError
from hypnos.data.crossfilter import Config, agreement, decide, judge_request, score_answer
from hypnos.data.parsing import ParseError, expected_score, logprob_scores, parse_generated, parse_scores

ANSWER = "连贯性：8\n专业性：7分\n有用性: 9/10\n无害性：10\n**友好性**：6\n理由：回答准确但略显生硬。"


def test_parse_scores_from_text_and_json():
    assert parse_scores(ANSWER) == {"coherence": 8, "professionalism": 7, "usefulness": 9, "harmlessness": 10,
                                    "friendliness": 6}
    s = parse_scores('{"coherence": 8, "专业性": 12, "usefulness": "x"}')
    assert s["coherence"] == 8 and s["professionalism"] is None and s["usefulness"] is None  # 12 is out of range


def test_parse_generated_shapes():
    assert parse_generated('[{"question": "丙泊酚的不良反应？", "answer": "低血压、注射痛。", "type": "病例分析"}]')[0][
        "kind"] == "case"
    pairs = parse_generated("1. 问：术前禁食多久？\n答：成人固体食物6-8小时。\n2. 问：什么是恶性高热？\n答：骨骼肌高代谢危象。")
    assert [p["instruction"] for p in pairs] == ["术前禁食多久？", "什么是恶性高热？"]
    numbered = parse_generated("1. 全麻诱导常用药物有哪些？\n丙泊酚、芬太尼。\n2. 喉罩的禁忌证？\n饱胃患者。")
    assert len(numbered) == 2 and numbered[1]["output"] == "饱胃患者。"
    with pytest.raises(ParseError, match="empty"):
        parse_generated("  ")
    with pytest.raises(ParseError, match="no JSON"):
        parse_generated("抱歉，我不能回答。")


def _tok(t, top=None):
    return {"token": t, "logprob": 0.0, "top_logprobs": [{"token": k, "logprob": math.log(p)} for k, p in (top or {}).items()]}


def test_probability_weighted_scores_follow_the_aspect_label():
    assert expected_score([{"token": "8", "logprob": math.log(0.6)}, {"token": "7", "logprob": math.log(0.3)},
                           {"token": "的", "logprob": math.log(0.1)}]) == pytest.approx((8 * 0.6 + 7 * 0.3) / 0.9)
    assert expected_score([{"token": "的", "logprob": math.log(0.9)}, {"token": "7", "logprob": math.log(0.1)}]) is None
    toks = [_tok("连贯"), _tok("性"), _tok("："), _tok("8", {"8": 0.5, "6": 0.5}), _tok("\n专业性："),
            _tok("9", {"9": 1.0})]
    s = logprob_scores(toks)
    assert s["coherence"] == pytest.approx(7.0) and s["professionalism"] == pytest.approx(9.0)
    assert s["usefulness"] is None
    cfg = Config(input="x", judges=["a"], scoring="logprobs")
    v = score_answer(cfg, "连贯性：8\n专业性：9\n有用性：5\n无害性：10\n友好性：9", toks)
    assert v["source"] == "mixed" and v["scores"]["coherence"] == pytest.approx(7.0)
    assert v["scores"]["usefulness"] == 5  # no logprob for it: the parsed number
    assert v["overall"] == pytest.approx((7 + 9 + 5 + 10 + 9) / 5)
    assert score_answer(cfg, "没有分数", None)["overall"] is None


def _v(overall, **aspects):
    scores = {a: aspects.get(a, overall) for a in ("coherence", "professionalism", "usefulness", "harmlessness",
                                                     "friendliness")}
    scores["harmlessness"] = aspects.get("harmlessness", 10)  # harmless unless a test says otherwise
    return {"scores": scores, "overall": overall}


def test_aggregation_modes():
    verdicts = {"a": _v(9), "b": _v(6), "c": _v(8)}
    assert decide(Config(input="x", judges=["a"], aggregate="mean", threshold=7.5), verdicts)[:2] == (True, 23 / 3)
    assert decide(Config(input="x", judges=["a"], aggregate="min", threshold=7), verdicts) == (False, 6, "below_threshold")
    assert decide(Config(input="x", judges=["a"], aggregate="vote", threshold=7), verdicts)[0] is True  # 2 of 3
    assert decide(Config(input="x", judges=["a"], aggregate="vote", threshold=8.5), verdicts)[2] == "jury_majority_drop"
    floor = Config(input="x", judges=["a"], threshold=7, aspect_floor=5, veto={})
    assert decide(floor, {"a": _v(8, harmlessness=3)})[2] == "aspect_below_floor"
    unparsed = {"a": _v(9), "b": {"scores": {}, "overall": None}}
    assert decide(Config(input="x", judges=["a"]), unparsed)[0] is True  # ignore the failed judge
    assert decide(Config(input="x", judges=["a"], on_parse_failure="drop"), unparsed)[2] == "judge_parse_failure"
    assert decide(Config(input="x", judges=["a"]), {})[2] == "no_eligible_judge"


def test_harmlessness_is_a_veto_not_an_average():
    nine_nine_nine_zero_nine = {"a": _v(7.2, coherence=9, professionalism=9, usefulness=9, harmlessness=0,
                                         friendliness=9)}
    assert decide(Config(input="x", judges=["a"]), nine_nine_nine_zero_nine) == (False, 7.2, "veto_harmlessness")
    # aspect_floor 5 used to let harmlessness 5 through: the harmlessness veto (default floor 8) does not
    floor5 = Config(input="x", judges=["a"], aspect_floor=5)
    assert decide(floor5, {"a": _v(8.2, harmlessness=5)})[2] == "veto_harmlessness"
    # one harmful verdict among good ones drops the item, whatever the mean or the vote
    jury = {"a": _v(9), "b": _v(9), "c": _v(8, harmlessness=2)}
    for agg in ("mean", "min", "vote"):
        assert decide(Config(input="x", judges=["a"], aggregate=agg, threshold=5), jury)[2] == "veto_harmlessness"
    # a user-named aspect vetoes too
    assert decide(Config(input="x", judges=["a"], veto={"professionalism": 6}), {"a": _v(9, professionalism=5)})[2] \
        == "veto_professionalism"
    with pytest.raises(ValueError, match="unknown aspects"):
        Config(input="x", judges=["a"], veto={"safety": 5})


def test_a_verdict_missing_an_aspect_is_unparsed():
    cfg = Config(input="x", judges=["a"])
    v = score_answer(cfg, "连贯性：9\n有用性：9\n友好性：9\n理由：很好。", None)  # no 无害性, no 专业性
    assert v["overall"] is None and sorted(v["missing"]) == ["harmlessness", "professionalism"]
    assert decide(cfg, {"a": v}) == (False, None, "no_valid_judgement")
    full = score_answer(cfg, '{"reasoning": "剂量错误。", "coherence": 8, "professionalism": 2, "usefulness": 3, '
                             '"harmlessness": 1, "friendliness": 7}', None)
    assert full["overall"] == pytest.approx(4.2) and full["reason"] == "剂量错误。" and not full["missing"]
    # the reasoning comes first and may name an aspect before scoring it: the score is the last "名称：数字"
    assert parse_scores("理由：专业性：较差，有用性一般。\n连贯性：7\n专业性：3\n有用性：5\n无害性：9\n友好性：8")[
        "professionalism"] == 3


def _lp(text: str, top: dict[str, float] | None = None) -> dict:
    """A logprob entry as OpenAI sends it: ``bytes`` a list of ints, ``token`` the (maybe broken) text."""
    b = list(text.encode())
    return {"token": text, "bytes": b, "logprob": 0.0,
            "top_logprobs": [{"token": k, "bytes": list(k.encode()), "logprob": math.log(p)}
                             for k, p in (top or {text: 1.0}).items()]}


def test_ten_written_as_two_tokens_scores_ten():
    toks = [_lp("无害性"), _lp("："), _lp("1", {"1": 0.9, "9": 0.1}), _lp("0", {"0": 1.0}), _lp("\n")]
    assert logprob_scores(toks)["harmlessness"] == pytest.approx(0.9 * 10 + 0.1 * 9)
    # "1" followed by something else is a one
    toks = [_lp("无害性"), _lp("："), _lp("1", {"1": 1.0}), _lp("\n", {"\n": 0.8, "0": 0.2})]
    assert logprob_scores(toks)["harmlessness"] == pytest.approx(0.2 * 10 + 0.8 * 1)
    # under a grammar only digits can follow: renormalise over them, whatever their share of the raw mass,
    # and count the written token even when it is not among the top ones
    toks = [_lp("无害性"), _lp("："), {**_lp("7", {"的": 0.9, "6": 0.05}), "logprob": math.log(0.05)}, _lp("\n")]
    assert logprob_scores(toks)["harmlessness"] is None
    assert logprob_scores(toks, structured=True)["harmlessness"] == pytest.approx(6.5)
    toks = [_lp('"harmlessness": '), _lp("1", {"1": 0.6, "9": 0.2}), _lp("0", {"0": 0.1, ",": 0.1, "x": 0.8})]
    assert logprob_scores(toks, structured=True)["harmlessness"] == pytest.approx((0.3 * 10 + 0.3 * 1 + 0.2 * 9) / 0.8)
    # a single "10" token (tiktoken-style vocabularies) and a JSON key label
    toks = [_lp('{"'), _lp("harmlessness"), _lp('":'), _lp(" "), _lp("10", {"10": 0.5, "9": 0.5}), _lp("}")]
    assert logprob_scores(toks)["harmlessness"] == pytest.approx(9.5)


def _logprob_entries(tok, text: str) -> list[dict]:
    """``text`` tokenized by a real tokenizer, as the OpenAI logprob entries a server sends (byte pieces: "\ufffd")."""
    from hypnos.tokenizer.extend import bytes_to_unicode

    decoder = {c: b for b, c in bytes_to_unicode().items()}
    out = []
    for piece in tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"]):
        if piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
            raw = bytes([int(piece[3:-1], 16)])
        elif "▁" in piece or not all(c in decoder for c in piece):  # SentencePiece piece
            raw = piece.replace("▁", " ").encode()
        else:  # byte-level BPE
            raw = bytes(decoder[c] for c in piece)
        out.append({"token": raw.decode("utf-8", errors="replace"), "bytes": list(raw), "logprob": 0.0,
                    "top_logprobs": [{"token": raw.decode("utf-8", errors="replace"), "bytes": list(raw),
                                      "logprob": 0.0}]})
    return out


VERDICT = "理由：剂量正确。\n连贯性：8\n专业性：7\n有用性：9\n无害性：10\n友好性：6"


def _check_byte_pieces(tok):
    entries = _logprob_entries(tok, VERDICT)
    assert any("\ufffd" in e["token"] for e in entries), "the verdict should hold byte pieces"
    s = logprob_scores(entries)
    assert s == {"coherence": 8, "professionalism": 7, "usefulness": 9, "harmlessness": 10, "friendliness": 6}


def test_byte_piece_labels_parse_smollm2_bpe(tiny_model_dir):
    from transformers import AutoTokenizer

    _check_byte_pieces(AutoTokenizer.from_pretrained(tiny_model_dir))


LLAMA_SP = Path(os.environ.get("HYPNOS_DATA") or Path(__file__).parents[1] / ".." / "shared" / "data") / \
    "tokenizers" / "llama"


@pytest.mark.skipif(not (LLAMA_SP / "tokenizer.model").is_file(),
                    reason="shared LLaMA tokenizer (../shared/data/tokenizers/llama or HYPNOS_DATA) not present")
def test_byte_piece_labels_parse_llama_sentencepiece(tmp_path):
    from transformers import AutoTokenizer

    from hypnos.tokenizer.extend import extend_sentencepiece

    extend_sentencepiece(LLAMA_SP, [], tmp_path)  # no new pieces: the HF files of the original tokenizer
    _check_byte_pieces(AutoTokenizer.from_pretrained(tmp_path))


def test_agreement_statistics():
    items = [{"a": {"overall": x}, "b": {"overall": y}} for x, y in [(1, 2), (5, 6), (8, 9), (3, 3), (9, 10)]]
    ag = agreement(items, ["a", "b"])
    assert ag["spearman"]["a~b"]["rho"] == pytest.approx(1.0) and ag["spearman"]["a~b"]["items"] == 5
    assert 0.8 < ag["krippendorff_alpha"] <= 1.0
    reversed_ = [{"a": {"overall": x}, "b": {"overall": 10 - x}} for x in (1, 4, 7, 9)]
    assert agreement(reversed_, ["a", "b"])["krippendorff_alpha"] < 0
    assert agreement(items, ["a"]) == {}


@pytest.fixture(scope="module")
def second_tiny_model(tiny_model_dir, tmp_path_factory):
    """Another tiny model: same shape and tokenizer, different random weights."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaForCausalLM.from_pretrained(tiny_model_dir).config)
    out = tmp_path_factory.mktemp("tiny-llama-2")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_two_real_servers_generate_and_judge_each_other(tmp_path, tiny_model_dir, second_tiny_model, serve_model):
    seeds = [{"id": f"s{i}", "instruction": q, "output": "答案。"} for i, q in
             enumerate(["丙泊酚的常用诱导剂量？", "椎管内麻醉后低血压如何处理？", "术前禁食时间？"])]
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in seeds))
    # judged items: generated by each model in turn (tiny random models cannot write parseable QA themselves)
    items = [{"id": f"g{i}", "instruction": f"第{i}题：全麻苏醒延迟的原因？", "output": "药物残留等。",
              "meta": {"generator": "a" if i % 2 else "b"}} for i in range(4)]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in items))
    with serve_model(tiny_model_dir, name="tiny-a") as url_a, serve_model(second_tiny_model, name="tiny-b") as url_b:
        (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
            name: real
            endpoints:
              a: {{model: tiny-a, base_url: "{url_a}"}}
              b: {{model: tiny-b, base_url: "{url_b}"}}
            stages:
              - {{name: generate, seeds: seeds.jsonl, generators: [a, b], target_per_generator: 2,
                  items_per_request: 2, max_rounds: 1, max_tokens: 24}}
              - {{name: crossfilter, input: items.jsonl, judges: [a, b], scoring: logprobs, max_tokens: 12}}
              - {{name: selfjudge, kind: crossfilter, input: items.jsonl, judges: [a], allow_self_judging: true,
                  max_tokens: 12}}
            """))
        gen, cf, selfj = run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
    failed = [json.loads(x) for x in (tmp_path / "runs/real/generate/failed.jsonl").read_text().splitlines()]
    # random weights write no parseable QA: every answer is kept in failed.jsonl with its raw text and reason
    assert gen["counts"]["generated"] + len(failed) >= 2 and all(f["raw"] and f["reason"] for f in failed)
    assert {f["model"] for f in failed} <= {"tiny-a", "tiny-b"}
    assert gen["usage"]["a"]["completion_tokens"] > 0 and gen["usage"]["b"]["completion_tokens"] > 0
    # each item is judged by the other model only; unparseable verdicts are counted, not hidden
    rows = [json.loads(x) for f in ("kept", "dropped") for x in
            (tmp_path / f"runs/real/crossfilter/{f}.jsonl").read_text().splitlines()]
    for r in rows:
        assert list(r["meta"]["crossfilter"]["judges"]) == [{"a": "b", "b": "a"}[r["meta"]["generator"]]]
    judged_by = {j: sum(1 for r in rows if j in r["meta"]["crossfilter"]["judges"]) for j in ("a", "b")}
    assert judged_by == {"a": 2, "b": 2}
    unparsed = sum(1 for r in rows for v in r["meta"]["crossfilter"]["judges"].values() if v["overall"] is None)
    assert sum(cf["metrics"]["parse_failures"].values()) == unparsed
    assert cf["usage"]["a"]["requests"] == 2
    # one judge, self-judging allowed: its own items go through the self prompt, and the manifest says so
    assert selfj["metrics"]["self_judging"]["self_judgements"] == 2
    assert selfj["metrics"]["self_judging"]["WARNING"]


def _items(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


CF_RECIPE = """\
    name: cf
    endpoints:
      gen: {{model: model-g, base_url: "{url}"}}
      judge: {{model: model-j, base_url: "{url}"}}
    stages:
      - {{name: crossfilter, input: items.jsonl, judges: [judge], threshold: 7{extra}}}
    """


def _run_cf(tmp_path: Path, url: str, rows: list[dict], extra: str = "") -> tuple[dict, dict]:
    _items(tmp_path / "items.jsonl", rows)
    (tmp_path / "r.yaml").write_text(textwrap.dedent(CF_RECIPE.format(url=url, extra=extra)), encoding="utf-8")
    [m] = run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
    out = tmp_path / "runs/cf/crossfilter"
    rows = {json.loads(x)["id"]: json.loads(x) for f in ("kept", "dropped")
            for x in (out / f"{f}.jsonl").read_text(encoding="utf-8").splitlines()}
    return m, rows


def test_fault_server_judge_with_differing_aspects_gates_on_harmlessness(tmp_path):
    from faulty_server import FaultyServer, judge_responder

    rows = [{"id": "ok", "instruction": "丙泊酚诱导剂量？", "output": "1.5-2.5mg/kg。", "meta": {"generator": "gen"}},
            {"id": "harm", "instruction": "丙泊酚诱导剂量？", "output": "20mg/kg。[[harmlessness=0]]",
             "meta": {"generator": "gen"}},
            {"id": "five", "instruction": "丙泊酚诱导剂量？", "output": "约2mg/kg。[[harmlessness=5]]",
             "meta": {"generator": "gen"}},
            {"id": "gap", "instruction": "丙泊酚诱导剂量？", "output": "2mg/kg。[[omit=harmlessness]][[omit=professionalism]]",
             "meta": {"generator": "gen"}}]
    with FaultyServer(responder=judge_responder()) as server:
        m, out = _run_cf(tmp_path, server.base_url, rows, ", aspect_floor: 5")
        assert all(b["response_format"]["json_schema"]["schema"]["required"][0] == "reasoning" for b in server.bodies)
    assert out["ok"]["meta"]["crossfilter"].get("dropped") is None
    assert out["harm"]["meta"]["crossfilter"]["dropped"] == "veto_harmlessness"  # 9/9/9/0/9: mean 7.2 >= 7
    assert out["five"]["meta"]["crossfilter"]["dropped"] == "veto_harmlessness"
    assert out["gap"]["meta"]["crossfilter"]["dropped"] == "no_valid_judgement"
    assert m["metrics"]["verdicts_with_all_aspects"] == 0.75 and m["metrics"]["structured_verdicts"] == 4
    v = out["harm"]["meta"]["crossfilter"]["judges"]["judge"]
    assert v["scores"]["harmlessness"] == 0 and v["scores"]["coherence"] == 9 and v["reason"] == "测试。"


def test_validate_refuses_self_judging_under_another_name(tmp_path, caplog):
    from hypnos.common.runner import validate_recipe

    _items(tmp_path / "seeds.jsonl", [{"id": "s", "instruction": "术前禁食时间？", "output": "6-8小时。"}])
    _items(tmp_path / "items.jsonl", [{"id": "a", "instruction": "问题一？", "output": "答。"},
                                      {"id": "b", "instruction": "问题二？", "output": "答。", "meta": {"generator": "x"}}])
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""\
        name: selfj
        endpoints:
          teacher: {model: gpt-x, base_url: "https://api.example.com/v1"}
          judge: {model: gpt-x, base_url: "https://api.example.com/v1/"}
          other: {model: claude-y, base_url: "https://api.example.com/v1"}
        stages:
          - {name: generate, seeds: seeds.jsonl, generators: [teacher]}
          - {name: dedup, input: "@generate"}
          - {name: crossfilter, input: "@dedup", judges: [judge]}
          - {name: cf_ok, kind: crossfilter, input: "@dedup", judges: [judge, other]}
          - {name: cf_allowed, kind: crossfilter, input: "@generate", judges: [judge], allow_self_judging: true}
          - {name: cf_file, kind: crossfilter, input: items.jsonl, judges: [other]}
        """), encoding="utf-8")
    with caplog.at_level("WARNING", logger="hypnos"):
        probs = validate_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
    selfj = [p for p in probs if "same model" in p]
    assert len(selfj) == 1 and "'crossfilter'" in selfj[0] and "'judge'" in selfj[0] and "teacher" in selfj[0]
    assert "'cf_file': 1 input rows carry no meta.generator" in caplog.text
    assert not any("cf_ok" in p or "cf_allowed" in p or "cf_file" in p for p in probs)


def test_a_crossfilter_with_no_eligible_judge_fails_instead_of_keeping_nothing(tmp_path):
    from faulty_server import FaultyServer, judge_responder

    with FaultyServer(responder=judge_responder()) as server:
        ident = f"{server.base_url.split(':')[0]}://loopback/v1|model-j"  # rows written by the judge's own model
        rows = [{"id": f"r{i}", "instruction": "问题？", "output": "答。", "meta": {"generator": "ext", "generator_id": ident}}
                for i in range(3)]
        with pytest.raises(ConfigError, match="can only be judged by 'judge', the same model"):
            _run_cf(tmp_path, server.base_url, rows)


def test_judge_quality_card_on_the_calibration_set(tmp_path):
    from faulty_server import FaultyServer, judge_responder

    pref = Path(__file__).parents[1] / "examples/preference/anesthesia_preference.jsonl"
    n = sum(1 for _ in pref.open(encoding="utf-8"))

    def judge(body):  # a judge that can judge: good 9s, weak 6s, unsafe harmlessness 1
        prompt = body["messages"][-1]["content"]
        answer = prompt.split("【答案】", 1)[1].split("\n评分标准", 1)[0].strip()
        for line in pref.open(encoding="utf-8"):
            row = json.loads(line)
            for resp, label in zip(row["responses"], row["labels"]):
                if resp == answer:
                    body["messages"][-1]["content"] += {"good": "", "weak": "[[coherence=6]][[usefulness=5]]",
                                                        "unsafe": "[[harmlessness=1]]"}[label]
        return judge_responder()(body)

    shutil.copy(pref, tmp_path / "pref.jsonl")
    with FaultyServer(responder=judge) as server:
        m, _ = _run_cf(tmp_path, server.base_url, [{"id": "x", "instruction": "问？", "output": "答。",
                                                    "meta": {"generator": "gen"}}],
                       ', calibration: pref.jsonl')
    card = m["metrics"]["judge_card"]
    assert card["questions"] == n and card["file"] == "pref.jsonl"  # as the recipe names it, no machine path
    j = card["judges"]["judge"]
    assert j["good_beats_weak"] == 1.0 and j["unsafe_dropped"] == 1.0 and j["good_kept"] == 1.0
    assert j["parse_rate"] == 1.0 and j["pairs"] == sum(1 for x in pref.open() if '"weak"' in x)
    # the card reaches the report
    from hypnos.eval.report import build_report

    (tmp_path / "results.json").write_text(json.dumps({"models": {}, "tasks": {}, "scores": {}}), encoding="utf-8")
    data = build_report(tmp_path / "runs/cf", tmp_path / "results.json", tmp_path / "report.html")
    assert data["judge_cards"] == [{"stage": "crossfilter", "judge": "judge", "questions": n, **j}]
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<table id="judge-card">' in html and "100.0%" in html


def test_logprob_scores_come_from_a_real_hypnos_serve(tiny_model_dir, serve_model):
    """Structured outputs force `"coherence": <digits>`; the scores must be read from the token logprobs."""
    from hypnos.data.clients import Endpoint, LLMClient

    cfg = Config(input="x", judges=["a"], scoring="logprobs", max_tokens=300)
    with serve_model(tiny_model_dir, name="tiny") as url:
        client = LLMClient(Endpoint(base_url=url, model="tiny"))
        req = judge_request(cfg, {"instruction": "丙泊酚的诱导剂量是多少？", "output": "成人1.5-2.5mg/kg。"}, False, 0)
        res = client.chat_sync(req.pop("messages"), **req)
    assert res.error is None and res.structured and not res.truncated, res
    v = score_answer(cfg, res.text, res.logprobs, structured=res.structured)
    assert not v["missing"] and v["source"] == "logprobs", (res.text, v)
    assert all(0 <= s <= 10 for s in v["scores"].values())
    # the text the scores were read from is the answer itself, rebuilt from the tokens' bytes
    from hypnos.data.parsing import answer_text

    assert answer_text(res.logprobs)[-1] == res.text


def test_a_harmful_score_vetoes_even_from_a_verdict_missing_another_aspect():
    """Judge b says harmlessness 0 but leaves friendliness out; judge a says 9s. The harmful score is a
    veto, not averaged away, and not ignored because the verdict is otherwise incomplete (it was kept)."""
    cfg = Config(input="x", judges=["a", "b"])
    partial = score_answer(cfg, '{"reasoning": "剂量错误。", "coherence": 9, "professionalism": 9, "usefulness": 9, '
                                '"harmlessness": 0}', None)
    assert partial["overall"] is None and partial["missing"] == ["friendliness"]
    assert decide(cfg, {"a": _v(9), "b": partial}) == (False, 9, "veto_harmlessness")
    assert decide(Config(input="x", judges=["a", "b"], aggregate="vote"), {"a": _v(9), "b": partial})[2] == \
        "veto_harmlessness"


def test_logprob_score_of_an_aspect_is_its_last_label_like_the_text_score():
    """The reasoning comes first and may quote an aspect with a number; the score is the last one (as
    ``parse_scores`` reads it), else a reasoning's "无害性：9" overrode the written harmlessness 2."""
    text = '{"reasoning": "看似无害性：9，实际剂量错误", "coherence": 8, "professionalism": 2, "usefulness": 3, ' \
           '"harmlessness": 2, "friendliness": 7}'
    toks = [_lp(c, {c: 1.0}) for c in text]
    assert parse_scores(text)["harmlessness"] == 2
    assert logprob_scores(toks, structured=True)["harmlessness"] == pytest.approx(2)
    v = score_answer(Config(input="x", judges=["a"], scoring="logprobs"), text, toks, structured=True)
    assert v["scores"]["harmlessness"] == pytest.approx(2) and v["source"] == "logprobs"
    assert decide(Config(input="x", judges=["a"]), {"a": v})[2] == "veto_harmlessness"


def test_model_identity_ignores_host_case_default_port_and_credentials():
    """One model under two spellings of its URL is still one model (self-judging must be found)."""
    from hypnos.data.clients import endpoint_identity

    same = {endpoint_identity(u, "gpt-x") for u in ("https://api.example.com/v1", "https://API.Example.com:443/v1/",
                                                      "https://user:sk-1@api.example.com/v1?api-version=2024")}
    assert len(same) == 1 and "sk-1" not in same.pop()
    assert endpoint_identity("https://api.example.com:8443/v1", "gpt-x") != endpoint_identity(
        "https://api.example.com/v1", "gpt-x")
    assert endpoint_identity("http://localhost:8001/v1", "m") == endpoint_identity("http://127.0.0.1:9/v1", "m")


def test_a_judge_that_is_the_generator_under_another_name_skips_its_items_at_run_time(tmp_path):
    """Two judges, one of them the generator's model under another endpoint name: each item is judged by
    the other judge only (validate lets it through: an eligible judge remains)."""
    from faulty_server import FaultyServer, judge_responder

    rows = [{"id": f"r{i}", "instruction": "丙泊酚诱导剂量？", "output": "1.5-2.5mg/kg。", "meta": {"generator": "gen"}}
            for i in range(3)]
    _items(tmp_path / "items.jsonl", rows)
    with FaultyServer(responder=judge_responder()) as server:
        (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
            name: cf
            endpoints:
              gen: {{model: model-g, base_url: "{server.base_url}"}}
              alias: {{model: model-g, base_url: "{server.base_url}/"}}
              judge: {{model: model-j, base_url: "{server.base_url}"}}
            stages:
              - {{name: crossfilter, input: items.jsonl, judges: [alias, judge]}}
            """), encoding="utf-8")
        [m] = run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
        assert {b["model"] for b in server.bodies} == {"model-j"}
    kept = [json.loads(x) for x in (tmp_path / "runs/cf/crossfilter/kept.jsonl").read_text().splitlines()]
    assert len(kept) == 3 and all(list(r["meta"]["crossfilter"]["judges"]) == ["judge"] for r in kept)
    assert m["metrics"]["judgements"] == 3


def test_a_judge_that_cannot_answer_does_not_score_as_a_perfect_safety_gate(tmp_path):
    """A judge whose verdicts all miss an aspect "dropped" every unsafe answer (as unparsed): the card said
    unsafe_dropped 100%. Only verdicts that decide something count."""
    from faulty_server import FaultyServer, judge_responder

    pref = Path(__file__).parents[1] / "examples/preference/anesthesia_preference.jsonl"

    def judge(body):  # never scores friendliness
        body["messages"][-1]["content"] = body["messages"][-1]["content"].replace(
            "\n评分标准", "[[omit=friendliness]]\n评分标准", 1)
        return judge_responder()(body)

    with FaultyServer(responder=judge) as server:
        m, _ = _run_cf(tmp_path, server.base_url, [{"id": "x", "instruction": "问？", "output": "答。",
                                                    "meta": {"generator": "gen"}}], f', calibration: "{pref}"')
    j = m["metrics"]["judge_card"]["judges"]["judge"]
    assert j["parse_rate"] == 0.0 and j["unsafe"] > 0
    assert j["unsafe_dropped"] is None and j["good_beats_weak"] is None
