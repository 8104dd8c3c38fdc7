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


def _loads(s: str, repair: bool):
    """``json.loads``, or json-repair's best reading of a malformed JSON text (None if nothing usable)."""
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        if not repair:
            return None
    try:
        import json_repair
    except ImportError:  # optional at import time; a dependency of the package
        return None
    try:
        obj = json_repair.loads(s)
    except Exception:  # noqa: BLE001 -- json-repair is best effort; any failure means "nothing salvaged"
        return None
    return obj if isinstance(obj, (dict, list)) and obj else None


def _object_chunks(s: str) -> list[str]:
    """Top-level ``{...}`` spans of a text, found by brace depth outside strings.

    Why: one broken object (an unescaped quote, a cut-off tail) must not cost its neighbours; each
    span is then parsed (or repaired) on its own.
    """
    out, depth, start, in_str, esc = [], 0, -1, False, False
    for i, c in enumerate(s):
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"' or c == "\n" and depth:
                in_str = False
            continue
        if c == '"':
            in_str = True
        elif c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}" and depth:
            depth -= 1
            if depth == 0:
                out.append(s[start : i + 1])
    return out


def _as_list(obj) -> list:
    if isinstance(obj, dict):
        inner = next((v for v in obj.values() if isinstance(v, list) and v and isinstance(v[0], dict)), None)
        return inner if inner is not None else [obj]
    return obj if isinstance(obj, list) else []


def _json_candidates(text: str) -> list:
    """Every JSON object an answer holds, salvaging what it can.

    The whole (fenced) text as JSON if it parses; otherwise the salvage that recovers the most objects
    of: one object per line, each top-level ``{...}`` span on its own (repaired if malformed), and
    json-repair on the whole text (a cut-off array keeps its complete objects).
    """
    fenced = re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    blocks = fenced + [text]
    for block in blocks:
        s = block.strip()
        for start, end in (("[", "]"), ("{", "}")):
            i, j = s.find(start), s.rfind(end)
            if i < 0 or j <= i:
                continue
            obj = _loads(s[i : j + 1], repair=False)
            if obj is not None and _as_list(obj):
                return _as_list(obj)
    for block in blocks:
        s = block.strip()
        lines = [ln.strip().lstrip("[").rstrip("],").strip() for ln in s.splitlines()]
        per_line = [o for ln in lines if ln.startswith("{") and ln.endswith("}")
                    for o in [_loads(ln, repair=True)] if isinstance(o, dict)]
        chunks = [x for c in _object_chunks(s) for o in [_loads(c, repair=True)] if isinstance(o, dict)
                  for x in _as_list(o)]
        whole = []
        if "{" in s:
            start = s.find("[") if "[" in s and s.find("[") < s.find("{") else s.find("{")
            repaired = _loads(s[start:], repair=True)
            whole = [o for o in _as_list(repaired) if isinstance(o, dict)] if repaired is not None else []
        best = max((per_line, chunks, whole), key=len)  # the reading that salvages the most objects
        if best:
            return best
    return []


_LETTERS = "ABCDE"


def _mcq(obj: dict) -> dict | None:
    """An MCQ record (question, options A.., answer letter, explanation) from a JSON object, or None."""
    opts = obj.get("options") or obj.get("选项")
    if isinstance(opts, list):
        opts = {_LETTERS[i]: re.sub(r"^\s*[A-Ea-e]\s*[.、:：)）]\s*", "", str(o)) for i, o in enumerate(opts[:5])}
    if not isinstance(opts, dict) or len(opts) < 2:
        return None
    opts = {str(k).strip().upper()[:1]: str(v).strip() for k, v in opts.items()}
    if list(opts) != list(_LETTERS[: len(opts)]) or not all(opts.values()):
        return None
    low = {str(k).strip().lower(): v for k, v in obj.items()}
    ans = str(low.get("answer", low.get("答案", low.get("正确答案", "")))).strip().upper()
    m = re.match(r"[A-E]", ans)
    stem = _first({k: v for k, v in obj.items() if k not in ("options", "选项")}, ("question", "stem", "题干", "问题",
                                                                                     "instruction", "q"))
    if not m or m.group(0) not in opts or not stem:
        return None
    return {"question": stem, "options": opts, "answer": m.group(0),
            "explanation": _first(obj, ("explanation", "解析", "理由", "analysis")), "kind": "mcq"}


def _from_json(text: str) -> list[dict]:
    items = []
    for obj in _json_candidates(text):
        if not isinstance(obj, dict):
            continue
        if obj.get("options") or obj.get("选项"):
            mcq = _mcq(obj)
            if mcq is not None:
                items.append(mcq)
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
        ``[{"instruction", "input", "output", "kind"}]`` (a multiple-choice item with options and an
        answer letter comes as ``{"question", "options", "answer", "explanation", "kind": "mcq"}``),
        at least one.

    Raises:
        ParseError: empty answer, or no JSON items / 问答 pairs / numbered list found.
    """
    if not text or not text.strip():
        raise ParseError("empty answer")
    items = _from_json(text) or _from_pairs(text)
    items = [it for it in items if len(it.get("instruction", it.get("question", ""))) >= 4
             and (len(it.get("output", "")) >= 2 or "options" in it)]
    if not items:
        raise ParseError("no JSON items, 问/答 pairs or numbered questions with answers found")
    return items


_NUM = r"(\d+(?:\.\d+)?)\s*(?:分|/\s*10)?"


# Character bounds of each generated field before sizing (the most a field may hold with a roomy budget), and
# the tokens one item's JSON punctuation and keys take in a typical BPE (SmolLM2 spends 14 and 41).
_QA_FIELDS = {"instruction": (4, 200), "input": (0, 400), "output": (2, 800)}
_MCQ_FIELDS = {"question": (4, 200), **{k: (1, 80) for k in _LETTERS}, "explanation": (2, 400)}
_ITEM_OVERHEAD = {"qa": 24, "mcq": 48}
_ANSWER_OVERHEAD = 16  # {"items": [ ... ]}
_MIN_OUTPUT_CHARS = 24
_MIN_QUESTION_CHARS = 12


def field_bounds(kind: str, n: int, max_tokens: int | None = None, tokens_per_char: float | None = None) -> dict:
    """Per-field (min, max) characters of ``n`` items of ``kind``; sized to ``max_tokens`` when
    ``tokens_per_char`` is given, else the fixed bounds.

    A grammar-constrained small model writes a string until its ``maxLength``; bounds that add up to more than
    the answer budget get the answer cut mid-item and nothing parses (the demo's 135M teacher: 1 of 1 answers
    cut, 0 items). Sized, the fixed bounds shrink in proportion until ``n`` items fit at ``tokens_per_char``
    tokens per character (SmolLM2's byte-level BPE spends ~2 on clinical Chinese).

    Raises:
        ValueError: the budget leaves an item's answer/explanation under 24 characters or its question under 12.
    """
    shape = "mcq" if kind == "mcq" else "qa"
    fields = dict(_MCQ_FIELDS if shape == "mcq" else _QA_FIELDS)
    if max_tokens is None or tokens_per_char is None:
        return fields
    chars = (max_tokens - _ANSWER_OVERHEAD - n * _ITEM_OVERHEAD[shape]) / (n * tokens_per_char)
    scale = max(0.0, min(1.0, chars / sum(hi for _, hi in fields.values())))
    out = {k: (lo, max(lo, int(hi * scale))) for k, (lo, hi) in fields.items()}
    main, question = ("explanation", "question") if shape == "mcq" else ("output", "instruction")
    if out[main][1] < _MIN_OUTPUT_CHARS or out[question][1] < _MIN_QUESTION_CHARS:
        raise ValueError(
            f"max_tokens {max_tokens} leaves {max(0, int(chars))} characters for each {kind} item ({main} <= "
            f"{out[main][1]}, {question} <= {out[question][1]}) when {n} items are asked for at {tokens_per_char} "
            "tokens/character: raise max_tokens or lower items_per_request")
    return out


def generation_schema(kind: str, n: int, max_tokens: int | None = None, tokens_per_char: float | None = None) -> dict:
    """JSON schema of a generation answer: ``{"items": [n items of the kind]}`` (OpenAI structured outputs).

    The top level is an object because OpenAI's ``json_schema`` wants one; ``_json_candidates`` reads
    the list inside it. With ``tokens_per_char`` the string bounds are sized so that ``n`` items fit in ``max_tokens``
    (``field_bounds``).
    """
    b = field_bounds(kind, n, max_tokens, tokens_per_char)
    if kind == "mcq":
        item = {"type": "object", "additionalProperties": False,
                "required": ["question", "options", "answer", "explanation"],
                "properties": {"question": _string(*b["question"]),
                               "options": {"type": "object", "additionalProperties": False,
                                           "required": list(_LETTERS),
                                           "properties": {k: _string(*b[k]) for k in _LETTERS}},
                               "answer": {"type": "string", "enum": list(_LETTERS)},
                               "explanation": _string(*b["explanation"])}}
    else:
        item = {"type": "object", "additionalProperties": False, "required": ["instruction", "input", "output"],
                "properties": {k: _string(*b[k]) for k in ("instruction", "input", "output")}}
    return {"type": "object", "additionalProperties": False, "required": ["items"],
            "properties": {"items": {"type": "array", "items": item, "minItems": 1, "maxItems": n}}}


def _string(least: int, most: int) -> dict:
    """A JSON-schema string of ``least``..``most`` characters: the bound lets a grammar close the item in time
    (a small model left free keeps writing one string until the length limit cuts the whole answer)."""
    return {"type": "string", "minLength": least, "maxLength": most}


def verdict_schema(aspects: dict[str, str] = ASPECTS, reasoning_chars: int = 120) -> dict:
    """JSON schema of a judge verdict: the reasoning first (scores conditioned on it), then each aspect 0-10."""
    props: dict = {"reasoning": {"type": "string", "maxLength": reasoning_chars}}
    props.update({k: {"type": "integer", "minimum": 0, "maximum": 10} for k in aspects})
    return {"type": "object", "additionalProperties": False, "required": list(props), "properties": props}


def response_format(name: str, schema: dict) -> dict:
    """An OpenAI ``response_format`` asking for JSON matching ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def parse_scores(text: str, aspects: dict[str, str] = ASPECTS) -> dict[str, float | None]:
    """Scores 0-10 per aspect from a judge's answer ("专业性：8" or JSON); None where missing or out of range."""
    out: dict[str, float | None] = {}
    data = {}
    for obj in _json_candidates(text or ""):
        if isinstance(obj, dict):
            data.update({str(k).strip().lower(): v for k, v in obj.items()})
            inner = obj.get("scores")
            if isinstance(inner, dict):
                data.update({str(k).strip().lower(): v for k, v in inner.items()})
    for key, zh in aspects.items():
        val = data.get(key, data.get(zh))
        if val is None:
            # the last "名称：数字": a reasoning written first may name an aspect before scoring it
            ms = re.findall(rf"(?:{zh}|{key})\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*{_NUM}", text or "", re.IGNORECASE)
            val = ms[-1] if ms else None
        try:
            v = float(val) if val is not None and not isinstance(val, bool) else None
        except (TypeError, ValueError):
            v = None
        out[key] = v if v is not None and 0 <= v <= 10 else None
    return out


def parse_rationale(text: str) -> str:
    """The judge's short reason ("reasoning" in JSON, "理由：…"), or the last line."""
    for obj in _json_candidates(text or ""):
        if isinstance(obj, dict):
            for k in ("reasoning", "reason", "理由"):
                if isinstance(obj.get(k), str) and obj[k].strip():
                    return obj[k].strip()[:300]
    m = re.search(r"(?:理由|原因|评价|reason)\s*[:：]\s*(.+)", text or "", re.IGNORECASE)
    if m:
        return m.group(1).strip()[:300]
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def token_text(tok: dict) -> str:
    """A logprob entry's text from its UTF-8 ``bytes`` when given (OpenAI format: a list of ints).

    Why: servers send a byte piece of a multi-byte character as "\ufffd" in ``token``; only ``bytes``
    keeps the information (a partial character decodes to "" here; ``answer_text`` joins bytes first).
    """
    b = tok.get("bytes")
    if isinstance(b, list) and b:
        try:
            return bytes(b).decode("utf-8", errors="ignore")
        except (TypeError, ValueError):
            pass
    return str(tok.get("token", ""))


def _number_token(tok: dict) -> str | None:
    """The digits a score token holds ("8", " 10", "7\n" -> "7"), None if it starts with no digit."""
    m = re.match(r"\s*(\d+)(?!\.\d)", token_text(tok))
    return m.group(1) if m else None


def expected_score(top_logprobs: list[dict], min_mass: float = 0.5, sampled: dict | None = None,
                   following: dict | None = None, structured: bool = False) -> float | None:
    """Probability-weighted score over the values 0..10 at one position.

    Args:
        top_logprobs: ``[{"token", "logprob", "bytes"}, ...]`` for the position where the score starts.
        min_mass: if score tokens hold less probability than this, the model wasn't giving a score: None.
        sampled: the token actually written there; when it is "1", ``following`` (the next position's
            entry, with its ``top_logprobs``) splits its mass into "10" (P("1")·P("0"|"1")) and "1".
        following: the next position's logprob entry.
        structured: the answer was decoded under a JSON-schema grammar, which allows only digits here.
            The grammar's distribution is the model's renormalised over the allowed tokens, so the
            digits' share of the reported (unconstrained) logprobs is used as is, with no mass
            requirement, and the written token counts even when it is not among the top ones.

    Returns:
        The expected score, renormalised over the score values, or None. Without the next position for
        a "1" that was not written (its continuation is unknown: 1 or 10?) its mass is left out.
    """
    probs: dict[int, float] = {}
    entries = list(top_logprobs or [])
    if structured and sampled is not None and not any(_same(t, sampled) for t in entries):
        entries.append(sampled)
    for t in entries:
        digits = _number_token(t)
        if digits is not None and int(digits) <= 10 and len(digits) <= 2:
            probs[int(digits)] = probs.get(int(digits), 0.0) + math.exp(t["logprob"])
    if 1 in probs:
        p1 = probs.pop(1)
        if sampled is not None and _number_token(sampled) == "1" and following is not None:
            q0 = _p_zero_after_one(following, structured)
            probs[10] = probs.get(10, 0.0) + p1 * q0
            probs[1] = p1 * (1 - q0)
    mass = sum(probs.values())
    if mass == 0 or (not structured and mass < min_mass):
        return None
    return sum(k * p for k, p in probs.items()) / mass


def _same(a: dict, b: dict) -> bool:
    return token_text(a) == token_text(b)


def _p_zero_after_one(following: dict, structured: bool) -> float:
    """P("0" | "1") at the next position (under a grammar: among "0" and the tokens that end the number)."""
    entries = list(following.get("top_logprobs") or [])
    if not any(_same(t, following) for t in entries):
        entries.append(following)
    zero = sum(math.exp(t["logprob"]) for t in entries if re.match(r"0(?!\d)", token_text(t)))
    if not structured:
        return min(zero, 1.0)
    end = sum(math.exp(t["logprob"]) for t in entries if re.match(r"[\s,}]", token_text(t)))
    return zero / (zero + end) if zero + end > 0 else float(_number_token(following) == "0")


def answer_text(logprobs: list[dict]) -> list[str]:
    """The answer's text after each token, decoded from the tokens' bytes (incrementally, UTF-8)."""
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out, text = [], ""
    for tok in logprobs:
        b = tok.get("bytes")
        text += dec.decode(bytes(b)) if isinstance(b, list) else str(tok.get("token", ""))
        out.append(text)
    return out


def logprob_scores(logprobs: list[dict] | None, aspects: dict[str, str] = ASPECTS,
                   structured: bool = False) -> dict[str, float | None]:
    """Probability-weighted score per aspect from an answer's token logprobs.

    Walks the answer's tokens (their text rebuilt from ``bytes``); the last token with a digit after
    "<aspect name>：", "<aspect>:" or ``"<aspect key>":`` is the score (as in ``parse_scores``: a reasoning
    written first may quote an aspect with a number before scoring it), and its ``top_logprobs`` give
    the expected value over 0..10 (``expected_score``; a "10" written as "1","0" uses the next position).

    Args:
        logprobs: the answer's tokens, OpenAI chat format ``[{"token", "logprob", "bytes", "top_logprobs"}]``.
        aspects: aspect key -> Chinese name.
        structured: the answer was decoded under a JSON-schema grammar (see ``expected_score``).

    Returns:
        aspect -> expected score, None where the aspect or its score token was not found.
    """
    out: dict[str, float | None] = {k: None for k in aspects}
    toks = logprobs or []
    texts = answer_text(toks)
    for i, tok in enumerate(toks):
        before = (texts[i - 1] if i else "").rstrip(" *\t")
        if not before.endswith(("：", ":")) or _number_token(tok) is None:
            continue
        label = before[:-1].rstrip(' *"')
        for key, zh in aspects.items():
            if label.endswith(zh) or label.lower().endswith(key):
                out[key] = expected_score(tok.get("top_logprobs") or [], sampled=tok,
                                          following=toks[i + 1] if i + 1 < len(toks) else None,
                                          structured=structured)
    return out
