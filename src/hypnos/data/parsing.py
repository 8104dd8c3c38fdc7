"""Parsing LLM answers: generated QA pairs and judge scores, robust to the many shapes models produce.

Generated items come back as JSON (an array, objects one per line, inside a ```json fence or not),
as 问：…答：… pairs, or as a numbered list of questions each followed by its answer. Judge answers are
"连贯性：8" lines (or JSON); a probability-weighted score comes from the top log-probabilities of
the token after the aspect name. Anything that cannot be parsed raises ``ParseError`` with a reason,
so the caller can keep the raw text and count it.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path

import jinja2

PROMPTS = Path(__file__).parent / "prompts"

# aspect key -> its name in the judge prompt (the score follows "名称：")
ASPECTS = {"coherence": "连贯性", "professionalism": "专业性", "usefulness": "有用性",
           "harmlessness": "无害性", "friendliness": "友好性"}
KINDS = {"knowledge": "知识问答", "case": "病例分析", "mcq": "选择题", "patient": "患者科普"}

_Q_KEYS = ("instruction", "question", "问题", "问", "指令", "q")
_A_KEYS = ("output", "answer", "答案", "回答", "答", "解析", "a")
_IN_KEYS = ("input", "case", "病例", "病例资料", "输入", "context")
_KIND_KEYS = ("kind", "type", "类型", "题型")


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(PROMPTS), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=False, autoescape=False)


def render_prompt(name: str, **variables) -> str:
    """Render ``prompts/<name>.jinja`` (e.g. ``generate_v1``); a missing variable is an error."""
    try:
        return _env().get_template(f"{name}.jinja").render(**variables).strip()
    except jinja2.TemplateNotFound:
        known = sorted(p.stem for p in PROMPTS.glob("*.jinja"))
        raise ValueError(f"no prompt template {name!r} in {PROMPTS} (have: {', '.join(known)})") from None


class ParseError(ValueError):
    """An answer that could not be parsed; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def _first(d: dict, keys: tuple[str, ...]) -> str:
    low = {str(k).strip().lower(): v for k, v in d.items()}
    for k in keys:
        v = low.get(k)
        if isinstance(v, (str, int, float)) and str(v).strip():
            return str(v).strip()
        if isinstance(v, dict):  # options of a multiple-choice item given as a mapping
            return "\n".join(f"{kk}. {vv}" for kk, vv in v.items())
    return ""


def _kind(value: str) -> str:
    v = value.strip().lower()
    for key, zh in KINDS.items():
        if v == key or (v and (v in zh or zh in v)):
            return key
    return "knowledge"


def _json_candidates(text: str) -> list:
    fenced = re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    for block in fenced + [text]:
        s = block.strip()
        for start, end in (("[", "]"), ("{", "}")):
            i, j = s.find(start), s.rfind(end)
            if i < 0 or j <= i:
                continue
            try:
                obj = json.loads(s[i : j + 1])
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                obj = next((v for v in obj.values() if isinstance(v, list)), [obj])
            if isinstance(obj, list):
                return obj
        # one JSON object per line
        objs = []
        for line in s.splitlines():
            line = line.strip().rstrip(",")
            if line.startswith("{") and line.endswith("}"):
                try:
                    objs.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        if objs:
            return objs
    return []


def _from_json(text: str) -> list[dict]:
    items = []
    for obj in _json_candidates(text):
        if not isinstance(obj, dict):
            continue
        q, a = _first(obj, _Q_KEYS), _first(obj, _A_KEYS)
        if q and a:
            opts = obj.get("options") or obj.get("选项")
            if isinstance(opts, dict):
                q += "\n" + "\n".join(f"{k}. {v}" for k, v in opts.items())
            elif isinstance(opts, list):
                q += "\n" + "\n".join(str(o) for o in opts)
            items.append({"instruction": q, "input": _first(obj, _IN_KEYS), "output": a,
                          "kind": _kind(_first(obj, _KIND_KEYS))})
    return items


_QA_RE = re.compile(
    r"(?:^|\n)\s*(?:\d+[.、)）]\s*)?(?:\*\*)?(?:问题?|Q|问)(?:\*\*)?\s*\d*\s*[:：](?:\*\*)?\s*(?P<q>.+?)"
    r"\n?\s*(?:\*\*)?(?:答案?|回答|A|解析)(?:\*\*)?\s*\d*\s*[:：](?:\*\*)?\s*(?P<a>.+?)"
    r"(?=\n\s*(?:\d+[.、)）]\s*)?(?:\*\*)?(?:问题?|Q|问)(?:\*\*)?\s*\d*\s*[:：]|\n\s*\d+[.、)）]|\Z)",
    re.DOTALL)
_NUMBERED_RE = re.compile(r"^\s*\d+[.、)）]\s*(?P<q>[^\n]+)\n(?P<a>(?:(?!\s*\d+[.、)）]).*(?:\n|\Z))+)", re.MULTILINE)


def _from_pairs(text: str) -> list[dict]:
    items = [{"instruction": m["q"].strip(), "input": "", "output": m["a"].strip(), "kind": "knowledge"}
             for m in _QA_RE.finditer(text)]
    if items:
        return items
    return [{"instruction": m["q"].strip(), "input": "", "output": m["a"].strip(), "kind": "knowledge"}
            for m in _NUMBERED_RE.finditer(text) if m["a"].strip()]


def parse_generated(text: str) -> list[dict]:
    """Generated QA items from an LLM answer.

    Args:
        text: the raw answer.

    Returns:
        ``[{"instruction", "input", "output", "kind"}]``, at least one.

    Raises:
        ParseError: empty answer, or no JSON items / 问答 pairs / numbered list found.
    """
    if not text or not text.strip():
        raise ParseError("empty answer")
    items = _from_json(text) or _from_pairs(text)
    items = [it for it in items if len(it["instruction"]) >= 4 and len(it["output"]) >= 2]
    if not items:
        raise ParseError("no JSON items, 问/答 pairs or numbered questions with answers found")
    return items


_NUM = r"(\d+(?:\.\d+)?)\s*(?:分|/\s*10)?"


def parse_scores(text: str, aspects: dict[str, str] = ASPECTS) -> dict[str, float | None]:
    """Scores 0-10 per aspect from a judge's answer ("专业性：8" or JSON); None where missing or out of range."""
    out: dict[str, float | None] = {}
    data = {}
    for obj in _json_candidates(text or ""):
        if isinstance(obj, dict):
            data.update({str(k).strip().lower(): v for k, v in obj.items()})
    for key, zh in aspects.items():
        val = data.get(key, data.get(zh))
        if val is None:
            m = re.search(rf"(?:{zh}|{key})\s*(?:\*\*)?\s*[:：]?\s*(?:\*\*)?\s*{_NUM}", text or "", re.IGNORECASE)
            val = m.group(1) if m else None
        try:
            v = float(val) if val is not None else None
        except (TypeError, ValueError):
            v = None
        out[key] = v if v is not None and 0 <= v <= 10 else None
    return out


def parse_rationale(text: str) -> str:
    """The judge's short reason ("理由：…"), or the last line."""
    m = re.search(r"(?:理由|原因|评价|reason)\s*[:：]\s*(.+)", text or "", re.IGNORECASE)
    if m:
        return m.group(1).strip()[:300]
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def expected_score(top_logprobs: list[dict], min_mass: float = 0.5) -> float | None:
    """Probability-weighted score over the tokens "0".."10" at one position.

    Args:
        top_logprobs: ``[{"token": str, "logprob": float}, ...]`` for the position after "专业性：".
        min_mass: if score tokens hold less probability than this, the model wasn't giving a score: None.

    Returns:
        The expected score, renormalised over the score tokens, or None.
    """
    probs: dict[int, float] = {}
    for t in top_logprobs or []:
        tok = str(t.get("token", "")).strip()
        if tok.isdigit() and 0 <= int(tok) <= 10:
            probs[int(tok)] = probs.get(int(tok), 0.0) + math.exp(t["logprob"])
    mass = sum(probs.values())
    if mass < min_mass or mass == 0:
        return None
    return sum(k * p for k, p in probs.items()) / mass


def logprob_scores(logprobs: list[dict] | None, aspects: dict[str, str] = ASPECTS) -> dict[str, float | None]:
    """Probability-weighted score per aspect from an answer in the fixed "专业性：8" format.

    Walks the answer's tokens; the first token after "<aspect name>：" (or ":") is the score, and its
    ``top_logprobs`` give the expected value over "0".."10" (``expected_score``).

    Args:
        logprobs: the answer's tokens, OpenAI chat format ``[{"token", "logprob", "top_logprobs"}]``.
        aspects: aspect key -> Chinese name.

    Returns:
        aspect -> expected score, None where the aspect or its score token was not found.
    """
    out: dict[str, float | None] = {k: None for k in aspects}
    text = ""
    for tok in logprobs or []:
        stripped = text.rstrip(" *")
        if stripped.endswith(("：", ":")) and tok["token"].strip(" *"):
            label = stripped[:-1].rstrip(" *")
            for key, zh in aspects.items():
                if out[key] is None and label.endswith(zh):
                    out[key] = expected_score(tok.get("top_logprobs") or [])
        text += tok["token"]
    return out
