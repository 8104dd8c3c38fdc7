"""Names in the way people address and introduce each other (round 4b): a patient line's head (X，女，45岁),
老/小 + a surname, 小 + a doubled character, a surname + 哥/姐, a bare surname before a title after a verb of
contacting or a department, a department then a name, a given name alone after a kinship word or before an
elder's form of address, and a vocative. Split out of ``deid_names`` (round 5); ``find_names`` calls
``address_names`` after its anchor rules.
"""

from __future__ import annotations

import re
from functools import lru_cache

from hypnos.data.deid_names import (
    _LABEL_ENDS,
    _LIST_SEP,
    _NOT_GIVEN_ALONE,
    _PROPER_OR_NONE,
    _SELF_REPORT,
    _TITLE_RE,
    _VERB_RE,
    LABELS,
    SURNAMES,
    TITLES,
    WEAK_SURNAMES,
    _acceptable,
    _common_word,
    _dict_tag,
    _guarded,
    _is_word,
    _jieba,
    _name_at,
    _segment,
    _words,
    given_chars,
    surname_at,
)

_SURN_CHARS = "".join(sorted(SURNAMES - WEAK_SURNAMES))
_LEFT_OK = "，,。；;：:！!？?（(\"“‘'、\n \t　跟和与同让叫找问给请谢向"
# The head of a patient line: a name of any origin (次仁卓玛, 阿依古丽, 向明), then sex and age
_HEAD_RE = re.compile(r"(?:^|(?<=[。；;！!？?\n\s　]))(?:(?:患者|病人|患儿|产妇|姓名[：:]?)\s*)?"
                      r"([\u4e00-\u9fff]{2,4})(?=[，,]\s*[男女][，,]\s*\d{1,3}\s*(?:岁|月龄|个月))")
_NOT_IN_HEAD = set("的了是在和与患者病人属儿孩男女岁科室床号院诊治疗术后前中内外痛炎症病因性年月日天")
# 老/小 + a surname, the way colleagues and patients call someone (老杨说, 小毛，, “小段医生”)
_FAMILIAR_RE = re.compile(rf"(?:^|(?<=[{re.escape(_LEFT_OK)}]))[老小]([{_SURN_CHARS}])"
                          r"(?=[，,！!：:。（(]|说|讲|问|告诉|让|医生|护士|大夫|老师|主任|哥|姐|你|您|$)")
# 小 + a doubled given-name character (小轩轩, 小萱萱): a child's pet name
_DOUBLED_RE = re.compile(rf"(?:^|(?<=[{re.escape(_LEFT_OK)}]))小(([\u4e00-\u9fff])\2)")
# a surname + 哥/姐 as a form of address (秦哥，…, 江姐那边)
_SIBLING_RE = re.compile(rf"(?:^|(?<=[{re.escape(_LEFT_OK)}]))([{_SURN_CHARS}])(?=[哥姐](?:[，,！!：:]|那边|说|你|您|$))")
# A bare surname before a title after a verb of contacting, a time word or a department
# (已报告田医生, 已通知邹护士长, 上午吴大夫查房, 刚才崔医生, 急诊科周医生接诊)
_BARE_LEFT_RE = re.compile(r"(?:通知|报告|联系|请示|呼叫|汇报|转告|告诉|上午|下午|早上|中午|晚上|刚才|刚刚|今天|昨天|"
                           r"明天|今早|昨晚|挂了|找了|问了|[^\W\d_a-zA-Z]科)$")
_DEPT_RE = re.compile(r"(?<=[\u4e00-\u9fff])科(?=[\u4e00-\u9fff])")
# A given name alone after a kinship word or 我叫 (他媳妇小芳明天…, 我叫思远放学…) or before an elder's form of
# address (“晓红阿姨”): families and patients use given names without the surname
_GIVEN_AFTER_RE = re.compile(r"(?:媳妇|老公|老婆|丈夫|妻子|爱人|儿子|女儿|老伴|孙子|孙女|哥哥|姐姐|弟弟|妹妹|我叫|名叫"
                             # (round 5) more kin and children, and nurses, whom the ward calls by given name
                             r"|闺女|外孙女|外孙|孙媳|侄子|侄女|外甥女|外甥|宝宝|宝贝|孩子|小名|乳名|护士|老伴儿"
                             r"|姑娘|对象|表妹|表姐|表哥|表弟|堂妹|堂姐|堂哥|堂弟|儿媳|女婿|嫂子|弟媳|妹夫|姐夫)"
                             r"([\u4e00-\u9fff]{2})")
_GIVEN_AFTER5 = set(_words("闺女 外孙女 外孙 孙媳 侄子 侄女 外甥女 外甥 宝宝 宝贝 孩子 小名 乳名 护士 老伴儿 姑娘 对象 "
                           "表妹 表姐 表哥 表弟 堂妹 堂姐 堂哥 堂弟 儿媳 女婿 嫂子 弟媳 妹夫 姐夫"))
# Given names of the 1950s-70s that are also words (建国 found a state, 卫东, 胜利 victory): names only right
# after a kinship word (我大儿子建国在国外, 老伴建华), where the tag and POS checks would refuse them
_WORD_GIVEN = frozenset(_words("建国 建军 建华 建设 国庆 国强 卫东 卫国 卫红 红军 胜利 跃进 援朝 向东 向阳 爱国 爱民 "
                               "振华 振兴 兴华 和平 解放 东风 红卫 学军 文革 永红 海燕 春花 秋菊 冬梅 红梅 玉兰"))
_GIVEN_BEFORE_RE = re.compile(rf"(?:^|(?<=[{re.escape(_LEFT_OK)}]))([\u4e00-\u9fff]{{2}})(?=阿姨|叔叔|奶奶|爷爷|大爷|大妈|妈妈|爸爸|外婆|外公|姥姥|姥爷|家长)")
# A vocative at a line's start: a given name alone, then 你/您 (建军，你把…)
_VOCATIVE_RE = re.compile(r"(?:^|(?<=[\n“\"]))([\u4e00-\u9fff]{2})(?=[，,]\s*[你您])")


def _pos_first_is_name(text: str, s: int, cand: str) -> bool:
    """jieba's POS tagger reads ``cand`` at ``s`` as one name token (小芳|明天, 思远|放学; not 过|性生活, 刚生|完:
    an adverb, 生完: a verb)."""
    toks = _pos_tokens(text[s : s + len(cand) + 4])
    return bool(toks) and toks[0][0] == cand and toks[0][1] in ("nr", "nrt", "nrfg")


@lru_cache(maxsize=65536)
def _pos_tokens(window: str) -> tuple[tuple[str, str], ...]:
    return tuple((w, f) for w, f in _jieba()[1].lcut(window, HMM=True))


def address_names(text: str, free) -> list[tuple[int, int]]:
    """Names in a patient line's head (X，女，45岁) and in forms of address (老杨, 小毛, 小轩轩, 秦哥, 已通知邹护士长,
    急诊科周医生, 建军，你…): each pattern says "person" on its own, and each candidate must still be no
    ordinary word and outside the guard list."""
    out: list[tuple[int, int]] = []
    gc = given_chars()
    for m in _HEAD_RE.finditer(text):
        cand = m.group(1)
        s = m.start(1)
        # (患者|次仁卓玛: the label is not part of the name)
        if text.startswith(_LABEL_ENDS, s) or any(c in _NOT_IN_HEAD for c in cand[1:]) or cand[0] in "的了是在患病":
            continue
        if _dict_tag(cand) not in (None, "nr", "nrt", "nrfg", "nz") or _guarded(text, s) or cand.endswith(_LABEL_ENDS):
            continue
        # jieba's tokens in it are names, places or unknown (次仁卓玛, 扎西|顿珠, 向明), not common words run
        # together (胃|间质|瘤，男)
        toks, n = [], 0
        for t in _segment(text[s : s + len(cand) + 1]):
            toks.append(t)
            n += len(t)
            if n >= len(cand):
                break
        if n != len(cand) or any(len(t) > 1 and _dict_tag(t) not in _PROPER_OR_NONE for t in toks) \
                or (len(toks) > 1 and any(len(t) == 1 and _dict_tag(t) is not None and t not in SURNAMES for t in toks)):
            continue
        out.append((s, s + len(cand)))
    for m in _FAMILIAR_RE.finditer(text):
        s = m.start(1)
        # 老X/小X may be a dictionary noun (小毛, 老马) but no other part of speech, title or guard word (老师, 小麦)
        word = text[s - 1 : s + 1]
        if text[s + 1 : s + 2] in "（(" and word[0] == "小" and _dict_tag(word) == "n" \
                and not re.match(r"[男女\d]", text[s + 2 : s + 3]):
            continue  # (小费（…）: before a parenthesis 小 + a noun is that noun; 老马（患者之子）, 老张（男）are people)
        if _dict_tag(word) in (None, "nr", "n") and not _guarded(text, s - 1) \
                and word not in LABELS and word not in TITLES:
            out.append((s, s + 1))
    for m in _SIBLING_RE.finditer(text):
        s = m.start(1)
        if _dict_tag(text[s : s + 2]) is None and not _guarded(text, s):  # (师姐, 空姐: words)
            out.append((s, s + 1))
    for m in _DOUBLED_RE.finditer(text):
        if m.group(2) in gc and _dict_tag(m.group(1)) in (None, "nr") and not _guarded(text, m.start(1)) \
                and m.group(1) not in LABELS:  # (小宝宝)
            out.append(m.span(1))
    for m in _TITLE_RE.finditer(text):
        s = m.start() - 1
        # a weak surname too when the title is followed by what only a person has (挂了常教授的号)
        booked = text.startswith(("的号", "的专家号", "的门诊"), m.end())
        if s < 1 or not surname_at(text, s, weak_ok=booked) or not _BARE_LEFT_RE.search(text, max(0, s - 4), s):
            continue
        if _dict_tag(text[s] + m.group()) in (None, "nr") and not _guarded(text, s) and not _is_word(text[s : s + 2]):
            out.append((s, s + 1))
    for m in _DEPT_RE.finditer(text):  # a department, then a name ending like a list item (影像科魏红。)
        n = _name_at(text, m.end())
        if n and surname_at(text, m.end(), weak_ok=False) and not _common_word(text[m.end() : m.end() + n]) \
                and _acceptable(text, m.end(), n, strong=False):
            out.append((m.end(), m.end() + n))
    for rx in (_GIVEN_AFTER_RE, _GIVEN_BEFORE_RE):
        for m in rx.finditer(text):
            cand = m.group(1)
            if not free(*m.span(1)):
                continue  # (我叫|王建国: the rules have it; the POS tagger below is the costly check)
            # both characters given-name ones, no dictionary word (小学, 明天, 志愿), no person word (宝宝)
            # (the first character no food, drug or anatomy one: 名叫|水飞|蓟宾; 晓红, 小红 stand)
            # after the round-5 anchors (宝宝, 孩子, 护士 …, followed by predicates as often as by names) jieba's
            # nr is not enough: it tags 过敏 nr (宝宝过敏的食物)
            e = m.end(1)
            if cand in _WORD_GIVEN and m.group(0)[:-2] not in ("我叫", "名叫", "护士", "宝宝", "宝贝", "孩子") \
                    and not _is_word(text[e - 1 : e + 1]):
                out.append(m.span(1))
                continue
            tags = (None, "nrt", "nrfg") if m.group(0)[:-2] in _GIVEN_AFTER5 and not (
                text[e : e + 1] in tuple(_LIST_SEP) or _VERB_RE.match(text, e)
                or _SELF_REPORT.match(text, e)) else (None, "nr", "nrt")  # (护士秀兰、春梅; 秀兰说)
            if all(c in gc for c in cand) and cand[0] not in _NOT_GIVEN_ALONE and _dict_tag(cand) in tags \
                    and not _guarded(text, m.start(1)) and cand not in LABELS and cand not in TITLES \
                    and (text[e : e + 1] == "、" or _pos_first_is_name(text, m.start(1), cand)):  # (护士秀兰、: a list)
                out.append(m.span(1))
    for m in _VOCATIVE_RE.finditer(text):
        cand = m.group(1)
        # (a noun is fine here, 建军 is one; a kinship or role word is not: 宝宝，你, 阿姨，您)
        if all(c in gc for c in cand) and _dict_tag(cand) in (None, "nr", "nrt", "nrfg", "n") and not _guarded(text, m.start(1)) \
                and cand not in LABELS and cand not in TITLES:
            out.append(m.span(1))
    return out
