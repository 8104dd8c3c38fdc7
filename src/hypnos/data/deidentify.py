"""Scrub Chinese personal information from records, and measure how well that works.

Run: ``hypnos deidentify --config deid.yaml`` or as a recipe stage::

    - name: deidentify
      kind: deidentify
      input: "@decontaminate"
      hospitals: [北京协和医院]

Replaced with typed placeholders: names ([姓名]: 患者张某某, 张某, 李医生, 王女士, 姓名：…), 18-digit
resident ID numbers ([身份证号], only with a valid ISO 7064 MOD 11-2 check digit, so a lab value or
an order number of 18 digits stays), mobile and landline numbers ([电话]), 住院号/病案号/门诊号/病历号
([住院号]), addresses ([地址]: after 住址/家住/… or starting with a province or municipality),
dates of birth ([出生日期], dates next to 出生/生于 only; a surgery date stays) and hospitals from a
configured list ([医院]). Patterns favour precision on clinical text: "向医生咨询" and "张口困难" are
not names. The manifest counts replacements per type; the original strings are written nowhere.

``synthetic_cases`` builds test texts with injected fictional PII and known spans; ``evaluate``
reports precision and recall per type (``hypnos data deid-eval`` prints the table).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from hypnos.common.io import DataError, iter_rows, write_jsonl
from hypnos.common.progress import track
from hypnos.common.stage import StageConfig, StageContext, StageResult

PLACEHOLDER = {"name": "[姓名]", "id": "[身份证号]", "phone": "[电话]", "record": "[住院号]",
               "address": "[地址]", "dob": "[出生日期]", "hospital": "[医院]"}

# Common surnames. Left out on purpose: characters that are far more often words before 医生/主任
# in clinical text (向 "ask", 和/与 "and", 由 "by", 麻 of 麻醉, 管 of 管床, 值 of 值班).
SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁"
            "任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方邹熊白孟秦邱侯江尹薛闫段雷龙黎史陶贺顾毛郝龚邵万钱严覃武"
            "戴莫孔汤")
_SN = f"[{SURNAMES}]"
_CJK = "[\u4e00-\u9fff]"
_TITLES = "医生|大夫|护士长|护士|主任|教授|先生|女士|小姐|老师|阿姨|师傅|同志"
PROVINCES = ("北京|天津|上海|重庆|河北|山西|辽宁|吉林|黑龙江|江苏|浙江|安徽|福建|江西|山东|河南|湖北|湖南|广东|"
             "海南|四川|贵州|云南|陕西|甘肃|青海|台湾|内蒙古|广西|西藏|宁夏|新疆|香港|澳门")
_DATE = r"(?:19|20)\d{2}\s*(?:年\s*\d{1,2}\s*月\s*\d{1,2}\s*日?|[-/.]\d{1,2}[-/.]\d{1,2})"

# (type, pattern); the named group ``v`` (or the whole match) is what gets replaced.
PATTERNS: list[tuple[str, re.Pattern]] = [
    ("id", re.compile(r"(?<![0-9A-Za-z])(?P<v>\d{17}[\dXx])(?![0-9A-Za-z])")),
    ("phone", re.compile(r"(?<![0-9])(?P<v>(?:\+?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2})(?![0-9])")),
    ("phone", re.compile(r"(?<![0-9])(?P<v>(?:[（(]0\d{2,3}[)）]|0\d{2,3}[- －])\d{7,8})(?![0-9])")),
    ("record", re.compile(r"(?:住院号|病案号|门诊号|病历号|住院号码|ID号)\s*[：:为是]?\s*(?P<v>[A-Za-z]{0,3}\d[\dA-Za-z-]{3,})")),
    ("dob", re.compile(rf"(?:出生日期|出生年月|出生于|生于|出生)\s*[：:为是]?\s*(?P<v>{_DATE})")),
    ("dob", re.compile(rf"(?P<v>{_DATE})\s*(?:出生|生)(?!活|理|长|产|命|化)")),
    ("address", re.compile(r"(?:住址|地址|家住|住在|居住于|居住在|现住|户籍地|户籍所在地)\s*[：:为是]?\s*"
                           r"(?P<v>[^，。；,;、\s]{3,40})")),
    ("address", re.compile(rf"(?P<v>(?:{PROVINCES})(?:省|市|自治区|特别行政区)?(?:{_CJK}{{1,5}}[市州盟])?"
                           rf"(?:{_CJK}{{1,5}}[区县旗])?{_CJK}{{1,10}}(?:路|街|大道|巷|弄|胡同)"
                           r"[0-9一二三四五六七八九十百]+号(?:[0-9]+(?:号楼|栋|幢|单元|楼|室|层))*)")),
    ("name", re.compile(rf"(?:姓名|患者姓名|病人姓名|联系人)\s*[：:]\s*(?P<v>{_CJK}{{2,4}})")),
    ("name", re.compile(rf"(?P<v>{_SN}某{{1,2}})")),
    ("name", re.compile(rf"(?:患者|病人|患儿|产妇|家属|丈夫|妻子|儿子|女儿)(?P<v>{_SN}{_CJK}{{1,2}}?)"
                        rf"(?=[，,、。；;（(\s]|[男女]|\d|因|于|主诉|自诉)")),
    ("name", re.compile(rf"(?P<v>{_SN}{_CJK}{{0,2}}?)(?:{_TITLES})")),
]
_PRIORITY = {"id": 0, "phone": 1, "record": 2, "dob": 3, "hospital": 4, "address": 5, "name": 6}


def valid_resident_id(s: str) -> bool:
    """True if ``s`` is an 18-character PRC resident ID with a correct ISO 7064 MOD 11-2 check digit."""
    if not re.fullmatch(r"\d{17}[\dXx]", s):
        return False
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(c) * w for c, w in zip(s[:17], weights))
    return "10X98765432"[total % 11] == s[17].upper()


@dataclass(frozen=True)
class PIISpan:
    """A piece of personal information found in a text (end exclusive)."""

    start: int
    end: int
    type: str


class Deidentifier:
    """Finds and replaces PII in Chinese text.

    Args:
        hospitals: hospital names to replace with [医院] (longest first, so a branch beats its parent).
    """

    def __init__(self, hospitals: list[str] | tuple[str, ...] = ()):
        names = sorted({h for h in hospitals if h}, key=len, reverse=True)
        self.hospital_re = re.compile("|".join(map(re.escape, names))) if names else None

    def find(self, text: str) -> list[PIISpan]:
        """Non-overlapping PII spans in ``text``, sorted by start."""
        found: list[PIISpan] = []
        for kind, pat in PATTERNS:
            for m in pat.finditer(text):
                start, end = m.span("v")
                if kind == "id" and not valid_resident_id(m.group("v")):
                    continue
                found.append(PIISpan(start, end, kind))
        if self.hospital_re is not None:
            found += [PIISpan(*m.span(), "hospital") for m in self.hospital_re.finditer(text)]
        # higher-priority (more certain) types first, then longer spans; drop anything overlapping
        found.sort(key=lambda s: (_PRIORITY[s.type], -(s.end - s.start), s.start))
        taken: list[PIISpan] = []
        for s in found:
            if all(s.end <= t.start or s.start >= t.end for t in taken):
                taken.append(s)
        return sorted(taken, key=lambda s: s.start)

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        """``text`` with every PII span replaced by its placeholder, and counts per type."""
        counts: dict[str, int] = {}
        out, pos = [], 0
        for s in self.find(text):
            out += [text[pos : s.start], PLACEHOLDER[s.type]]
            pos = s.end
            counts[s.type] = counts.get(s.type, 0) + 1
        out.append(text[pos:])
        return "".join(out), counts


# ---- evaluation on synthetic cases ----------------------------------------------------------------

_GIVEN = "建国伟芳秀英敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂兰海燕晓红春华志文玉梅子涵浩宇欣怡"
_CITIES = [("浙江省", "杭州市", "西湖区"), ("广东省", "广州市", "天河区"), ("北京市", "", "朝阳区"),
           ("四川省", "成都市", "武侯区"), ("湖北省", "武汉市", "洪山区"), ("上海市", "", "徐汇区")]
_ROADS = ["文一路", "中山大道", "建设街", "人民路", "解放巷", "学院路"]
SYNTH_HOSPITALS = ["青禾市第一人民医院", "云溪县中医院", "南湖大学附属第二医院"]

# Clinical sentences with nothing to find: they measure precision.
_DISTRACTORS = [
    "术中血压维持在120/80mmHg左右，丙泊酚2mg/kg诱导。", "建议向医生咨询术前禁食时间。",
    "患者张口困难，Mallampati分级III级。", "手术日期：2023年5月12日，术后第3天拔管。",
    "医嘱编号123456789012345678，已执行。", "七氟烷吸入浓度2%，心率72次/分。",
    "请于术前8小时禁食，次日复查血常规。", "经治医生与家属沟通后签署知情同意书。",
]


def _fake_id(rng: random.Random) -> str:
    body = f"{rng.randint(110000, 659000)}{rng.randint(1950, 2010)}{rng.randint(1, 12):02d}" \
           f"{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body + "10X98765432"[sum(int(c) * w for c, w in zip(body, weights)) % 11]


def _fake(kind: str, rng: random.Random) -> str:
    sn = rng.choice(SURNAMES)
    if kind == "name":
        return rng.choice([sn + "某某", sn + "某", sn + "".join(rng.sample(_GIVEN, rng.randint(1, 2)))])
    if kind == "id":
        return _fake_id(rng)
    if kind == "phone":
        mob = f"1{rng.choice('3456789')}{rng.randint(0, 9)}{rng.randint(0, 99999999):08d}"
        return rng.choice([mob, f"{mob[:3]}-{mob[3:7]}-{mob[7:]}", f"0{rng.randint(10, 999)}-{rng.randint(2000000, 89999999)}"])
    if kind == "record":
        return rng.choice(["", "ZY", "MZ"]) + str(rng.randint(100000, 99999999))
    if kind == "dob":
        y, m, d = rng.randint(1940, 2015), rng.randint(1, 12), rng.randint(1, 28)
        return rng.choice([f"{y}年{m}月{d}日", f"{y}-{m:02d}-{d:02d}", f"{y}/{m}/{d}"])
    if kind == "address":
        prov, city, dist = rng.choice(_CITIES)
        return f"{prov}{city}{dist}{rng.choice(_ROADS)}{rng.randint(1, 300)}号" + rng.choice(["", f"{rng.randint(1, 30)}栋{rng.randint(101, 2508)}室"])
    return rng.choice(SYNTH_HOSPITALS)


# Each template alternates literal text and {slot}s; a slot is one PII value of that type.
_TEMPLATES = [
    "患者{name}，男，{age}岁，因右膝骨关节炎拟行全膝关节置换术。",
    "姓名：{name}，身份证号：{id}，联系电话：{phone}。",
    "{name_title}医生查房后建议调整镇痛方案，住院号：{record}。",
    "产妇{name}，出生日期：{dob}，家住{address}，拟在腰硬联合麻醉下行剖宫产。",
    "病案号{record}，患儿{name}于{hospital}行扁桃体切除术，{dob}出生。",
    "家属电话{phone}，现住{address}，门诊号：{record}。",
    "{name_title}女士，{age}岁，身份证{id}，既往高血压病史。",
    "我们联系了{hospital}麻醉科，患者{name}（{age}岁）术后恢复良好。",
]


def synthetic_cases(n: int = 200, seed: int = 0) -> list[dict]:
    """Synthetic clinical sentences with injected fictional PII and their gold spans.

    Returns:
        ``[{"text": str, "spans": [{"start", "end", "type"}]}]``; about a third of the cases also
        carry a PII-free distractor sentence (doses, blood pressure, a surgery date, an 18-digit
        order number with a wrong check digit).
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tpl = rng.choice(_TEMPLATES)
        text, spans = "", []
        for lit, slot in re.findall(r"([^{]*)(?:\{(\w+)\})?", tpl):
            text += lit
            if not slot:
                continue
            if slot == "age":
                text += str(rng.randint(1, 90))
                continue
            kind = "name" if slot == "name_title" else slot
            value = rng.choice(SURNAMES) if slot == "name_title" else _fake(kind, rng)
            spans.append({"start": len(text), "end": len(text) + len(value), "type": kind})
            text += value
        if rng.random() < 0.35:
            text += rng.choice(_DISTRACTORS)
        out.append({"text": text, "spans": spans})
    return out


def evaluate(deid: Deidentifier, cases: list[dict]) -> dict[str, dict[str, float]]:
    """Precision and recall per PII type (and "all").

    A gold span counts as found when a predicted span of the same type covers at least half of it;
    a predicted span is correct when it overlaps a gold span of the same type.
    """
    stats: dict[str, dict[str, float]] = {}

    def add(t: str, key: str) -> None:
        for k in (t, "all"):
            stats.setdefault(k, {"tp": 0, "fn": 0, "fp": 0})[key] += 1

    for case in cases:
        pred = deid.find(case["text"])
        gold = case["spans"]
        for g in gold:
            hit = any(p.type == g["type"] and min(p.end, g["end"]) - max(p.start, g["start"])
                      >= (g["end"] - g["start"]) / 2 for p in pred)
            add(g["type"], "tp" if hit else "fn")
        for p in pred:
            if not any(p.type == g["type"] and min(p.end, g["end"]) > max(p.start, g["start"]) for g in gold):
                add(p.type, "fp")
    for s in stats.values():
        s["precision"] = s["tp"] / (s["tp"] + s["fp"]) if s["tp"] + s["fp"] else 1.0
        s["recall"] = s["tp"] / (s["tp"] + s["fn"]) if s["tp"] + s["fn"] else 1.0
    return stats


# ---- the stage ------------------------------------------------------------------------------------

# keys whose values are labels, ids or answers letters, never free text to scrub
_NOT_TEXT = {"id", "source", "category", "kind", "difficulty", "split", "answer", "labels", "domain", "from",
             "meta", "type", "start", "end"}


class Config(StageConfig):
    """De-identification stage config."""

    input: str
    """Rows to scrub (path or "@stage[.output]"); any record kind."""
    hospitals: list[str] = Field(default_factory=list)
    """Hospital names to replace with [医院]."""
    hospitals_file: str | None = None
    """A text file with one more hospital name per line."""

    def check(self, ctx: StageContext) -> list[str]:
        return ctx.check_ref(self.input, "input") + ctx.check_ref(self.hospitals_file, "hospitals_file")


def _scrub_obj(obj, deid: Deidentifier, counts: dict[str, int]):
    if isinstance(obj, str):
        new, c = deid.scrub(obj)
        for k, v in c.items():
            counts[k] = counts.get(k, 0) + v
        return new
    if isinstance(obj, list):
        return [_scrub_obj(v, deid, counts) for v in obj]
    if isinstance(obj, dict):
        return {k: (v if k in _NOT_TEXT else _scrub_obj(v, deid, counts)) for k, v in obj.items()}
    return obj


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Write ``scrubbed`` rows; NER rows whose text changed move to ``dropped`` (their spans no longer fit)."""
    hospitals = list(cfg.hospitals)
    if cfg.hospitals_file:
        hospitals += [ln.strip() for ln in Path(ctx.resolve(cfg.hospitals_file)).read_text("utf-8").splitlines()]
    deid = Deidentifier(hospitals)
    counts: dict[str, int] = {}
    kept, dropped, changed = [], [], 0
    for item in track(list(iter_rows(ctx.resolve(cfg.input))), desc="deidentify", unit="row"):
        if isinstance(item, DataError):
            raise item
        row_counts: dict[str, int] = {}
        new = _scrub_obj(item.data, deid, row_counts)
        if row_counts:
            changed += 1
            for k, v in row_counts.items():
                counts[k] = counts.get(k, 0) + v
        if "entities" in new and new.get("text") != item.data.get("text"):
            dropped.append({"id": new.get("id"), "reason": "ner_spans_invalidated", "replaced": row_counts})
        else:
            kept.append(new)
    write_jsonl(ctx.out_dir / "scrubbed.jsonl", kept)
    write_jsonl(ctx.out_dir / "dropped.jsonl", dropped)
    return StageResult(outputs={"scrubbed": "scrubbed.jsonl", "dropped": "dropped.jsonl"},
                       counts={"in": len(kept) + len(dropped), "kept": len(kept), "dropped": len(dropped),
                               "rows_changed": changed},
                       dropped={"ner_spans_invalidated": len(dropped)} if dropped else {},
                       metrics={"replaced": {PLACEHOLDER[k]: v for k, v in sorted(counts.items())}})
