"""Round 5 name families: how people are named in ward talk, family questions and signature rows.

Each family is a context that says "person" on its own, written to catch any name of that shape, not
the instances it was tuned on (part 8's misses; see docs/deidentify.md):

- **a bare surname before a title or an elder's form of address** (遵王主任指示, 3床潘大爷, 值班医生葛医生,
  隔壁床的胡奶奶): a strong surname that ends no word on its left and, with the title, makes no word;
- **老/小 + a surname** wherever it stands after a boundary, a bed or 是 (5床老周今天…, 我是小王，), as long
  as the surname starts no word with what follows (小钱包, 老毛病 stay);
- **signature rows** (处方 and report footers: 医师X 审核X 调配X 核对X 发药X, 检验者X 审核者X): two or more
  role labels each followed by a short value; in such a row a value that starts with a surname is a
  name even when it is an ordinary word (花蕾, 柳絮);
- **children's pet names and nicknames** (我闺女朵朵, 宝宝乐乐, 小名豆豆, 收到，莉莉你…): a doubled character
  after a child or kinship word, before a child's age, as a vocative, and whatever follows 小名/乳名;
- **given names and full names before 姐/哥 used as address** (黄佳姐，, 芳芳姐，);
- **strong compound surnames** (上官婉清, 端木蓉) + one or two given-name characters anywhere, when they
  start no longer word (微生物).

Every candidate still passes the guard list (``deid_guard.txt``) and a dictionary check.
"""

from __future__ import annotations

import re
from functools import lru_cache

from hypnos.data.deid_address import _SURN_CHARS, _WORD_GIVEN, _pos_tokens
from hypnos.data.deid_names import (
    _CHAT_ADDRESS,
    _COMMON_GIVEN,
    _NOT_GIVEN_ALONE,
    _NOT_PERSON_AFTER,
    _SENTENCE_END,
    _SPEAKERS,
    _STRONG_COMPOUND,
    _STRONG_COMPOUND_SET,
    COMPOUND,
    DAY_WORDS,
    LABELS,
    NOT_GIVEN,
    TITLES,
    VERBAL_SURNAMES,
    WEAK_SURNAMES,
    _dict_tag,
    _guarded,
    _is_word,
    _longest_word,
    _ner_given_chars,
    given_chars,
    guard_words,
    surname_at,
    trie_pattern,
)

_CJK = "\u4e00-\u9fff"

# ---- a bare surname before a title or an elder's form of address ---------------------------------------

# Words people put after a bare surname to address or refer to someone (王主任, 潘大爷, 胡奶奶, 钱师傅)
_ADDRESS_AFTER = ("护士长", "主任", "医生", "医师", "大夫", "教授", "护士", "院长", "老师", "师傅", "先生", "女士",
                  "小姐", "同志", "阿姨", "叔叔", "大爷", "大妈", "大娘", "大叔", "大婶", "大姐", "大哥", "奶奶",
                  "爷爷", "婆婆", "伯伯", "阿婆", "老太", "老爷子", "主管", "组长", "科长", "老板", "经理", "姐", "哥", "嫂",
                  # (round 7) a neighbour's or a colleague's elder form, one character (王姨, 李叔, 张婶)
                  "姨", "叔", "婶")
_ADDRESS_RE = re.compile(rf"(?<=[{_SURN_CHARS}{''.join(sorted(WEAK_SURNAMES - VERBAL_SURNAMES - COMPOUND))}])" + trie_pattern(_ADDRESS_AFTER))


# what follows a title when it names a place, not a person (医生办公室, 护士站, 主任室)
_PLACE_AFTER = re.compile("办公室|站|室|值班室|休息室|群|组|台")


# who thanks, asks for or looks for someone by title (感谢冷医生, 麻烦冷护士): here even a weak surname is one
_THANK_RE = re.compile(r"(?:感谢|谢谢|多谢|麻烦|找一下|请教)$")
# a surname said as such (我姓宓, 婆婆姓笪, 患者姓张), and a family called by its surname (覃家的人来问了)
_SURNAME_SAID = re.compile(rf"姓([{_CJK}]{{1,2}})(?=[，,。；;！!？?、\s]|$|今年|的|叫|名)")
_FAMILY_OF = re.compile(rf"([{_SURN_CHARS}])家(?=的人|人|属|里的|那边|来人|的孩子|的老人)")


def _said_surnames(text: str) -> list[tuple[int, int]]:
    """A surname stated with 姓 (我姓宓, 婆婆姓笪，, 我复姓欧阳) and a family named by its surname
    (覃家的人, 刚才韩家人来过; not 国家, 专家, 万家: words)."""
    out = []
    for m in _SURNAME_SAID.finditer(text):
        sn = surname_at(text, m.start(1))
        if sn:
            out.append((m.start(1), m.start(1) + len(sn)))
    for m in _FAMILY_OF.finditer(text):
        s = m.start(1)
        if not _is_word(text[s : s + 2]) and not (s and _is_word(text[s - 1 : s + 1])) and not _guarded(text, s):
            out.append((s, s + 1))
    return out


def _bare_surnames(text: str) -> list[tuple[int, int]]:
    """A strong surname right before a title or an elder's form of address (遵王主任指示, 3床潘大爷,
    值班医生葛医生): the surname must end no word on its left (值班|医生, 邻居|大爷, 结石|医生, 历史|老师)
    and make no word with the title (班主任); the surname and its title make a person whatever precedes."""
    out = []
    for m in _ADDRESS_RE.finditer(text):
        s = m.start() - 1
        thanked = len(m.group()) > 1 and bool(_THANK_RE.search(text, max(0, s - 3), s))
        if (text[s] in WEAK_SURNAMES and not thanked) or _guarded(text, s) or (s and text[s - 1].isdigit()) \
                or _PLACE_AFTER.match(text, m.end()):
            continue  # (5楼医生办公室, 3层护士站: a floor or a unit, then a place)
        if s and _CJK_RE.match(text, s - 1) and (_is_word(text[s - 1 : s + 1]) or (s > 1 and _is_word(text[s - 2 : s + 1]))):
            continue
        if _dict_tag(text[s : m.end()]) not in ((None, "nr") if len(m.group()) > 1 else (None,)) \
                or (s >= 1 and _dict_tag(text[s - 1 : m.end()]) is not None):
            continue  # (班主任; 老大爷 is no surname's; jieba tags 师姐 nr: with 姐/哥/嫂 no word at all)
        first = _longest_word(text, s)
        if len(first) > 1 + len(m.group()) or (len(first) > 1 and _dict_tag(first) not in (None, "nr")
                                               and first != text[s : m.end()]):
            continue  # (温哥华: a longer word starts at the surname)
        out.append((s, s + 1))
    return out


# ---- 老/小 + a surname -------------------------------------------------------------------------------

_DASHES = set("-－—‐")
_FAMILIAR_LOOSE = re.compile(rf"[老小]([{_SURN_CHARS}])")


# staff roles before 小/老 + a surname (治疗师小陆, 护工老杨)
_STAFF_ENDS = ("师", "护士", "医生", "大夫", "护工", "工作人员", "志愿者", "社工", "校医", "村医", "保育员", "护理员", "专员")
# (round 7) 老刘家的孙子: a family called by 老 + its surname; jieba's 刘家 (a name word) makes no word of the surname
_FAMILY_HOUSE = re.compile("家(?:的|里|人|那)")


def _familiar(text: str) -> list[tuple[int, int]]:
    """老/小 + a strong surname (5床老周, 我是小王, 刚才小冯来过), whatever follows, when
    the surname starts no word with the next character (小钱|包, 老毛|病 stay: 钱包, 毛病) and 老X/小X is no
    dictionary word but a name (小包, 小钱 are nouns; 小林 is a name)."""
    out = []
    for m in _FAMILIAR_LOOSE.finditer(text):
        s = m.start(1)
        word = text[s - 1 : s + 1]
        if text[s - 2 : s - 1] in _DASHES or text[s + 1 : s + 2] in _DASHES and s + 1 < len(text):
            continue  # (伏格特-小柳-原田综合征: an eponym)
        noun_ok = _dict_tag(word) == "n" and text[: s - 1].endswith(_STAFF_ENDS)  # (round 7: 治疗师小陆; jieba's 小陆 is a noun)
        if (_dict_tag(word) not in (None, "nr", "t") and not noun_ok) or _guarded(text, s - 1) or word in LABELS or word in TITLES:
            continue
        if s + 1 < len(text) and _CJK_RE.match(text, s + 1) and not _FAMILY_HOUSE.match(text, s + 1) and (
                _is_word(text[s : s + 2]) or len(_longest_word(text, s - 1)) > 2
                or (_dict_tag(text[s : s + 2]) == "nr" and text[s + 1] in given_chars())):
            continue  # 小钱|包, 老毛病, 小王明|天 is 小王 only when 王明 is no name jieba knows
        out.append((s, s + 1))
    return out


# ---- signature rows ------------------------------------------------------------------------------------

# Who signs a prescription, a lab report or a dispensing slip: a row of two or more of these, each with a
# short value, is a row of names (医师X 审核X 调配X 核对X 发药X, 检验者X 审核者X, 采样：X  送检：X)
_SIGN_ROLES = ("处方医师", "开方医师", "医师", "药师", "审核者", "审核人", "审核", "审方", "调配者", "调配", "配药",
               "核对者", "核对人", "核对", "复核", "发药者", "发药", "划价", "收费", "收款", "检验者", "检验员",
               "检验", "报告者", "报告人", "检查者", "记录者", "记录人", "采样者", "采样", "送检者", "送检", "接收者",
               "签收", "执行者", "执行人", "操作者", "制单", "录入", "打印",
               # the operation team, listed the same way (主刀X，一助X; 巡回护士X，器械护士X)
               "主刀", "一助", "二助", "三助", "主麻", "副麻", "巡回护士", "器械护士", "洗手护士", "麻醉医师", "巡回", "器械",
               "医生", "护士", "护师", "技师")
_SIGN_RE = re.compile(trie_pattern(_SIGN_ROLES) + r"(?:\s*[：:])?[\s_　]*")
_SIGN_VALUE = re.compile(rf"[{_CJK}]{{2,4}}")
_CONJ = set("和与及或跟同")
_ROW_GAP = re.compile(r"[\s，,；;、/|　]*")
_ROW_GAP_HEAD = re.compile(rf"[\s，,；;、/|　]+[{_CJK}]{{1,4}}")
_TITLE_ROLES = ("医师", "医生", "护士", "护师", "药师", "技师")
# jieba's tags a name in a signature row may have: none (most names), a name, a place, a proper noun, or a time
# word (冷月, 满月, 秋月); not a common noun, verb, adjective or adverb (阴性, 合格, 通过, 完整, 明确)
_SIGN_VALUE_TAGS = (None, "nr", "nrt", "nrfg", "nz", "ns", "t")


def signature_rows(text: str) -> list[tuple[int, int]]:
    """Names in a row of signing roles: each label's value runs to the next label, a space or a
    punctuation mark; two or more label + short value pairs in a row make it a signature row, and there
    a value that starts with a surname is a name even when it is an ordinary word (调配：花蕾, 核对柳絮):
    not a verb, adverb or adjective after a weak surname (审核：通过, 核对：查对无误)."""
    marks = list(_SIGN_RE.finditer(text))
    if len(marks) < 2:
        return []  # (a fast exit: a row needs two labels)
    # each label's value, and whether the next label follows right after it (only spaces or separators
    # between): a row is a chain of such pairs (核对人、调配人应当拒绝发药 is running text, however many
    # role words a long text holds)
    values, linked = [], []
    for k, m in enumerate(marks):
        stop = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        v = _SIGN_VALUE.match(text, m.end(), stop)
        if not v or (v.end() < stop and _CJK_RE.match(text, v.end())):
            values.append(None)  # the value runs on (医师建议患者…): running text, no field
            linked.append(False)
            continue
        values.append(v.span())
        linked.append(k + 1 < len(marks) and bool(
            _ROW_GAP.fullmatch(text, v.end(), stop)
            # (麻醉医师高峰，手术医师江河: a separator, then the head of the next role ending in 医师/医生/护士)
            or (marks[k + 1].group().startswith(_TITLE_ROLES) and _ROW_GAP_HEAD.fullmatch(text, v.end(), stop))))
    pairs = [values[k] for k in range(len(marks)) if values[k] and (
        (linked[k] and values[k + 1]) or (k and linked[k - 1] and values[k - 1]))]
    out, gc = [], given_chars()
    for s, e in pairs:
        sn = surname_at(text, s)
        value = text[s:e]
        if _guarded(text, s) or value in guard_words() or value in DAY_WORDS or value[0] in _CONJ \
                or value[:2] in DAY_WORDS or value[:2] in ("上午", "中午", "下午", "晚上", "早上", "今晚", "夜里"):
            continue  # (专业医生|和心理|医生: a coordination, no row; round 8: 护士明天来，医生下午来: a day, no name; 冷月 stays one)
        tag = _dict_tag(value)
        if not sn:
            # a given name alone (核对：春华): two given-name characters that jieba has as a name or not at all
            if e - s == 2 and all(c in gc for c in value) and tag in (None, "nr", "nrt", "nz"):
                out.append((s, e))
            continue
        if e - s <= len(sn) or tag not in _SIGN_VALUE_TAGS:
            continue  # (检验：阴性, 审核：通过, 核对：查对; 调配冷月 is a name: jieba calls 冷月 a time word)
        out.append((s, e))
    return out


# ---- children's pet names and nicknames ---------------------------------------------------------------

# Doubled characters that are words, not pet names: kin and address words, adverbs, onomatopoeia
_NOT_DOUBLED = set("汪喵咚嘀呜妈爸哥姐弟妹爷奶姥叔舅婶伯姑姨婆公宝娃常慢刚渐偏往明好仅稍悄默狠轻早时人处纷看试想"
                   "说走等谢哈呵嘿嗯哦啊呀拜行是对点些个天年月日次刻")
_KIN_CHARS = set("妈爸哥姐弟妹爷奶姥叔舅婶伯姑姨婆公宝娃")
_CHILD_WORDS = ("闺女", "女儿", "儿子", "孙子", "孙女", "外孙女", "外孙", "宝宝", "宝贝", "孩子", "小孩", "侄子",
                "侄女", "外甥女", "外甥", "患儿", "小朋友", "大宝", "二宝", "老大", "老二", "我家", "小家伙", "娃")
_PET_LEFT = re.compile("(?:" + "|".join(sorted(_CHILD_WORDS, key=len, reverse=True)) + r")(?P<naming>名叫|叫做|叫|是)?\s*$")
_DOUBLED = re.compile(rf"([{_CJK}])\1")
_PET_XIAO = re.compile("(?:" + "|".join(sorted((*_CHILD_WORDS, "护士", "朋友", "同学", "同事", "闺蜜"), key=len, reverse=True))
                       + rf")(?:名叫|叫做|叫|是)?(小[{_CJK}])")
# what follows a child's name (朵朵今年3岁, 乐乐八个月大, 果果你…)
_PET_RIGHT = re.compile(r"今年|[\d一二三四五六七八九十两]+(?:岁|个月|周|天)|出生|刚满|满月|你|您")
# two doubled names joined (牛牛和毛毛都来复诊了): each vouches for the other
_PAIRED_DOUBLED = re.compile(rf"[和、与及]([{_CJK}])\1(?![{_CJK}]?\1)")
# what one says to a child by name (“妞妞不哭，…”, 豆豆乖, 果果别怕)
_SOOTHE = re.compile("不哭|不怕|别哭|别怕|乖|快|来|过来|听话|张嘴|吃药")
_NICKNAME = re.compile(rf"(?:小名|乳名|昵称|外号|绰号|小名儿)(?:叫做|叫|是|为)?\s*[：:]?\s*(?![叫是为]|什么|啥|多少|哪)"
                       rf"([{_CJK}]{{1,3}})(?=[^{_CJK}“”\"]|$)")

# (round 6) a child's milk name in quotation marks (小名"豆豆", 乳名“安安”): a name whatever the word; nicknames
# in quotes stay (昵称为“传奇”: a nickname of a grown-up is seldom a name)
_MILK_NAME_QUOTED = re.compile(rf"(?:小名儿|小名|乳名)(?:叫做|叫|是|为)?\s*[：:]?\s*[“\"「‘']([{_CJK}]{{1,3}})[”\"」’']")

# 阿 + a given-name character, the southern way to call someone (我妈妈叫阿兰, 阿珍说, 阿强，你…): after a
# naming word or a kinship word, or before what a person does or is told
_A_NAME = re.compile(rf"(?:(?<=叫)|(?<=叫做)|(?<=名叫)|(?<=妈妈)|(?<=爸爸)|(?<=老公)|(?<=老婆)|(?<=媳妇)|(?<=我妈)|(?<=我爸)"
                     rf"|(?:^|(?<=[\n“\"，,。]))(?=阿[{_CJK}](?:说|讲|问|你|您|，你|，您)))阿([{_CJK}])(?![{_CJK}]?阿)")
# a mention in a chat message whose name is a given name or a nickname (@蓓蓓 明天你早班, @晓晨：)
_AT_GIVEN = re.compile(rf"[@＠]([{_CJK}]{{2,3}})(?=[\s，,：:]|$)")


# a surname + 一 + a given-name character (刘一诺, 王一鸣, 张一凡: common in children born since 2010, but 一 is a
# number everywhere else)
_YI_NAME = re.compile(rf"([{_SURN_CHARS}])一([{_CJK}])")
# a given name alone opening a quotation, then what one says when looking for someone (“秀芝呢，…”, “建华啊”)
_QUOTED_CALL = re.compile(rf"(?<=[“\"「])([{_CJK}]{{2}})(?=呢|啊|呀|在哪|怎么|，[^，。”\"]{{0,6}}[你您])")


def _yi_and_quoted_names(text: str) -> list[tuple[int, int]]:
    """刘一诺-style names: a strong surname that makes no word with 一 (万一, 统一) or with its left side, and
    一 + a given-name character that is no dictionary word (一次, 一般, 一天 are) and makes no word with what
    follows (高一|学生: 学生). And a given name alone that opens a quotation and calls someone (“秀芝呢，…”)."""
    out, gc = [], given_chars()
    for m in _YI_NAME.finditer(text) if "一" in text else ():
        s, x = m.start(1), m.start(2)
        if text[x] not in gc or text[x] in _NOT_GIVEN_ALONE or _dict_tag(text[x - 1 : x + 1]) is not None \
                or _is_word(text[s : s + 2]) or (s and _is_word(text[s - 1 : s + 1])) or _is_word(text[x : x + 2]) \
                or _guarded(text, s):
            continue
        out.append((s, x + 1))
    for m in _QUOTED_CALL.finditer(text) if ("“" in text or '"' in text or "「" in text) else ():
        cand = m.group(1)
        if all(c in gc for c in cand) and _dict_tag(cand) in (None, "nr", "nrt", "nrfg", "nz", "ns") \
                and cand not in LABELS and cand not in _R8_NOT_XIAO and not _guarded(text, m.start(1)):
            # (“钥匙呢: a noun; “宝宝呢: jieba's nr; round 8: “小狗呢, jieba's nr too)
            out.append(m.span(1))
    return out


def _a_and_at_names(text: str) -> list[tuple[int, int]]:
    """阿 + a given-name character after a naming or kinship word or as the subject of 说/问 (阿兰, 阿珍), and a
    chat mention of a given name (@蓓蓓 …): not 阿姨, 阿胶, 阿婆, 所有人, 全体成员 (dictionary words)."""
    out, gc = [], given_chars()
    for m in _A_NAME.finditer(text) if "阿" in text else ():
        s = m.start(1) - 1
        cand = text[s : s + 2]
        if m.group(1) in gc and _dict_tag(cand) in (None, "nr", "nrt", "nrfg", "ns") and not _guarded(text, s) \
                and cand not in TITLES and cand not in LABELS \
                and not (s + 2 < len(text) and _is_word(text[s + 1 : s + 3])) and len(_longest_word(text, s)) <= 2:
            out.append((s, s + 2))  # (阿里巴巴, 阿联酋: a longer word)
    for m in _AT_GIVEN.finditer(text) if ("@" in text or "＠" in text) else ():
        s, e = m.span(1)
        cand = text[s:e]
        if _guarded(text, s) or cand in LABELS or cand in _CHAT_ADDRESS or _dict_tag(cand) not in (None, "nr", "nrt", "nrfg") \
                or (len(cand) == 3 and (_is_word(cand[:2]) or _is_word(cand[1:]))):
            continue  # (@所有人: a noun; ＠危重型： a bullet before a word)
        if cand[0] == cand[1] or all(c in gc for c in cand) or surname_at(text, s):
            out.append((s, e))
    return out


def _pet_names(text: str) -> list[tuple[int, int]]:
    """A doubled character (朵朵, 豆豆, 乐乐) after a child or kinship word (我闺女朵朵, 宝宝乐乐), before
    a child's age or 你 (果果今年5岁, 收到，莉莉你…), or as a vocative at a line's start (朵朵，把药吃了);
    and whatever stands after 小名/乳名 (小名豆豆). Kin words, adverbs and measure words doubled (妈妈,
    常常, 天天, 个个) never; nor a doubled character jieba calls a verb, adverb, number or time."""
    out = []
    for m in _DOUBLED.finditer(text):
        s, e = m.span()
        ch = m.group(1)
        if e < len(text) and text[e] in (ch, "地"):
            continue  # 哈哈哈, 乐乐地笑: no name
        left = _PET_LEFT.search(text, max(0, s - 6), s)
        if left and left.group("naming") and ch not in _KIN_CHARS and not _guarded(text, s):
            out.append((s, e))  # 儿子叫天天: named, any doubled character but a kin word's
            continue
        if ch in _NOT_DOUBLED or ch in NOT_GIVEN or _dict_tag(text[s:e]) not in (None, "nr", "nrt", "nz", "n", "q", "a", "z", "ns"):
            continue  # (round 6: jieba calls 丹丹 a place)
        left_child = bool(left) or bool(_PAIRED_DOUBLED.match(text, e)) or (
            s >= 3 and text[s - 1] in "和、与及" and text[s - 3] == text[s - 2] and text[s - 2] not in _NOT_DOUBLED)
        at_start = s == 0 or text[s - 1] in "，,。！!？?\n“\"：: 　"
        # a vocative: at a line's start before a comma (朵朵，把药吃了), after any boundary before 你 (收到，莉莉你…)
        vocative = at_start and (bool(re.match(r"\s*[你您]", text[e : e + 2]))
                                 or ((s == 0 or text[s - 1] in "\n“\"") and (text[e : e + 1] in "，,！!"
                                                                             or _SOOTHE.match(text, e))))
        right = at_start and bool(_PET_RIGHT.match(text, e))
        if (left_child or vocative or right) and not _guarded(text, s):
            out.append((s, e))
    # 小 + a given-name character after a child or kinship word (我闺女小雨, 孙子小宇): a pet name when jieba
    # has it as a name or not at all (小学, 小便, 小心, 小时 are words)
    gc = given_chars()
    for m in _PET_XIAO.finditer(text):
        s = m.start(1)
        if text[s + 1] in gc and _dict_tag(text[s : s + 2]) in (None, "nr", "nrt") and not _guarded(text, s) \
                and len(_longest_word(text, s)) <= 2 and text[s : s + 2] not in LABELS:
            out.append((s, s + 2))
    for m in _NICKNAME.finditer(text):
        if not _guarded(text, m.start(1)):
            out.append(m.span(1))
    for m in _MILK_NAME_QUOTED.finditer(text) if "名" in text else ():  # (round 6) 小名"豆豆"
        if not _guarded(text, m.start(1)):
            out.append(m.span(1))
    return out


# ---- given and full names before 姐/哥 ------------------------------------------------------------------

_SIB_ADDRESS = re.compile(rf"(?:^|(?<=[，,。；;：:！!？?（(\"“‘'、\n \t　@＠跟和与同让叫找问给请谢向亏靠]))([{_CJK}]{{2,3}})"
                          r"(?=(?:姐姐|哥哥|姐|哥|叔叔|婶婶|叔|婶|姨|伯)(?:[，,！!：:。]|那边|说|你|您|$"
                          # (round 6) what the person did or does for one (谢谢俊辉哥帮忙顶班, 晓梅姐替我…)
                          r"|帮|替|给|陪|带|也|又|都|一直|刚才|今天|昨天|明天))")


def _sibling_address(text: str) -> list[tuple[int, int]]:
    """A full name or a given name used with 姐/哥 as a form of address (黄佳姐，…, 芳芳姐，…, 晓红哥说):
    a surname + given-name characters, or two given-name characters (doubled or jieba's name), never
    an ordinary word (师姐, 表哥, 大哥: the word check)."""
    if not any(k in text for k in "姐哥叔婶姨伯"):
        return []
    gc = given_chars()
    out = []
    for m in _SIB_ADDRESS.finditer(text):
        s, e = m.span(1)
        cand = text[s:e]
        doubled = len(cand) == 2 and cand[0] == cand[1] and cand[0] not in _NOT_DOUBLED and cand[0] in gc
        worded = cand in _WORD_GIVEN and text[e] in "叔婶姨伯"  # (round 7: 建国叔, 秀英婶: given names of the 1950s-70s)
        if _guarded(text, s) or cand in LABELS or (_dict_tag(cand) not in (None, "nr", "nrt", "nrfg") and not doubled and not worded):
            continue  # (round 7: 婷婷姐，: jieba calls 婷婷 a status word)
        sn = surname_at(text, s, weak_ok=False)
        full = sn and len(cand) > len(sn) and all(c in gc for c in cand[len(sn):])
        given = len(cand) == 2 and all(c in gc for c in cand) and (worded or 
            cand[0] == cand[1] or _dict_tag(cand) is not None or _pos_tokens(cand)[0][1].startswith("nr"))
        if full or given:
            out.append((s, e))
    return out


# ---- strong compound surnames anywhere --------------------------------------------------------------------

# a character class of their first characters finds candidates faster than an alternation of 90 pairs
_COMPOUND_RE = re.compile("[" + "".join(sorted({c[0] for c in _STRONG_COMPOUND})) + f"](?=[{_CJK}])")


@lru_cache(maxsize=1)
def _compound_given() -> frozenset[str]:
    return given_chars() | _ner_given_chars()


def _compound_names(text: str) -> list[tuple[int, int]]:
    """A strong compound surname (上官, 端木, 皇甫) + one or two given-name characters anywhere: they are
    almost never words, so no anchor is needed, but the name must start no longer word (微生物, 长孙女)
    and be no dictionary word but a name."""
    gc = _compound_given()
    out = []
    for m in _COMPOUND_RE.finditer(text):
        s, g = m.start(), m.start() + 2
        if text[s:g] not in _STRONG_COMPOUND_SET:
            continue
        if _guarded(text, s) or len(_longest_word(text, s + 1)) > 2:
            continue  # (老公|输精管: the second character starts a longer word)
        first = _longest_word(text, s)
        if len(first) > 2 and _dict_tag(first) not in (None, "nr", "nrt", "nrfg"):
            continue
        run = 0
        while run < 2 and g + run < len(text) and text[g + run] in gc and text[g + run] not in NOT_GIVEN:
            run += 1
        if run == 2 and _is_word(text[g + 1 : g + 3]) and not _is_word(text[g : g + 2]):
            run = 1  # 上官明|天来 → 上官明
        if not run or _dict_tag(text[s : g + run]) not in (None, "nr", "nrt", "nrfg"):
            continue
        out.append((s, g + run))
    return out


_CJK_RE = re.compile(f"[{_CJK}]")


# ---- given names alone, vouched for by the recogniser ---------------------------------------------------

_COMMON = "".join(sorted(set(_COMMON_GIVEN) - NOT_GIVEN - _NOT_GIVEN_ALONE))
_GIVEN_PAIR = re.compile(f"(?=([{_COMMON}]{{2}}))")
_GIVEN_WINDOW = 6


def given_names_by_ner(text: str, free) -> list[tuple[int, int]]:
    """A given name without its surname (思琪今天请假了, 表妹丽娟也…, 明轩妈妈，…, 昨天雨涵吐了两次): two of the
    commonest given-name characters that make no dictionary word (jieba's names aside), make no word with
    the characters either side, and that the named-entity recogniser, on a window of six characters either
    side within the sentence, tags as exactly one person."""
    from hypnos.data.deid_ner import person_spans

    out: list[tuple[int, int]] = []
    for m in _GIVEN_PAIR.finditer(text):
        s = m.start()
        e = s + 2
        cand = text[s:e]
        if not free(s, e) or cand[0] == cand[1] or _dict_tag(cand) not in (None, "nr", "nrt", "nrfg", "i") \
                or _guarded(text, s) or cand in LABELS:
            continue
        if (s and _is_word(text[s - 1 : s + 1])) or _is_word(text[e - 1 : e + 1]) \
                or (s > 1 and _is_word(text[s - 2 : s + 1])) or _is_word(text[e - 1 : e + 2]):
            continue  # (a word across either edge: 说明|显, 平|安全)
        if _NOT_PERSON_AFTER.match(text, e):
            continue  # (伏格特-小柳-原田综合征: an eponym)
        a = s
        while a > 0 and s - a < _GIVEN_WINDOW and text[a - 1] not in _SENTENCE_END:
            a -= 1
        b = e
        while b < len(text) and b - e < _GIVEN_WINDOW and text[b] not in _SENTENCE_END:
            b += 1
        if (s - a, e - a) in person_spans(text[a:b]):
            out.append((s, e))
    return out


def family_names(text: str) -> list[tuple[int, int]]:
    """The round-5 families' spans but signature rows (``signature_rows``, run first); callers check them
    against what is already claimed."""
    out = _compound_names(text) + _said_surnames(text) + _bare_surnames(text) + _familiar(text)
    out += _pet_names(text) + _sibling_address(text) + _a_and_at_names(text) + _yi_and_quoted_names(text)
    return out





# ---- round 6: rosters, attendee lists, name (role) lists, person labels, handles ---------------------------

# What a duty roster or a schedule lists people under (值班表：周一X、周二Y, 白班X 夜班Y, 一线：X  二线：Y): a
# chain of two or more such labels, each right after the previous label's short value, is a row of names
_ROSTER_LABELS = ("周一", "周二", "周三", "周四", "周五", "周六", "周日", "周天", "星期一", "星期二", "星期三", "星期四",
                  "星期五", "星期六", "星期日", "星期天", "早班", "白班", "中班", "晚班", "夜班", "大夜", "小夜", "前夜",
                  "后夜", "听班", "备班", "一线", "二线", "三线", "总值班", "主班", "辅班", "治疗班", "办公班")
_ROSTER_WORD = re.compile("值班|排班|班表|轮班|值守|出诊|坐诊|听班|备班|二线|一线")
_PLAIN_NAME_TAGS = (None, "nr", "nrt", "nrfg")
_ROSTER_RE = re.compile("(?:" + "|".join(sorted(_ROSTER_LABELS, key=len, reverse=True)) + r")(?:\s*[：:])?\s*")
# who takes part, keeps the minutes or writes: a field whose value is one name or a list of names (参加人员：X Y Z,
# 会议纪要整理：X, 主持人：X)
_LIST_LABEL_RE = re.compile(r"(?:参加人员|参会人员|出席人员|与会人员|到会人员|参与人员|讨论人员|参加讨论人员|列席人员|"
                            r"参加者|参会者|出席者|与会者|人员名单|整理人|整理|执笔人|执笔|撰写人|撰写|"
                            r"起草人|起草|主持人|主持|主讲人|主讲|汇报人|汇总人|讲者|授课人|授课|出席|列席|参加|参会)\s*[：:]\s*")
_LIST_ITEM = re.compile(rf"[{_CJK}]{{2,4}}")
_LIST_SEP = re.compile(r"[ 　\t]+|\s*[、，,/]\s*")
# tags an ordinary word has that a name written in a list never has: verbs, adverbs, function words, numbers
_NOT_NAME_TAGS = ("v", "vd", "vn", "d", "ad", "p", "c", "u", "m", "q", "r", "f", "l", "i")
# a role or a kin relation in parentheses right after a name (林海（主麻）, 揭海涛（患者之子）)
_PAREN_ROLE = ("主刀", "一助", "二助", "三助", "主麻", "副麻", "巡回", "器械", "洗手", "记录", "记录者", "主持", "主讲",
               "主任医师", "副主任医师", "主治医师", "住院医师", "规培医师", "进修医师", "实习医师", "护士长", "护士", "护师",
               "医师", "医生", "药师", "技师", "组长", "组员", "家属", "本人", "代签", "见证人", "监护人", "委托人",
               "规培", "进修", "实习", "轮转", "见习", "研究生")
# (a kin character alone needs 之: 王大妈（女） gives a sex, not a relation)
_PAREN_KIN = (r"(?:(?:患者|病人|患儿)?之(?:长|次|幼)?(?:子|女|夫|妻|父|母|孙|孙女|兄|弟|姐|妹)"
              r"|(?:患者|病人|患儿)?(?:长子|次子|长女|次女|儿子|女儿|丈夫|妻子|父亲|母亲|儿媳|女婿|侄子|侄女))")
_NAME_ROLE_RE = re.compile(rf"(?:^|(?<=[：:、，,；;\s由经请与]))([{_CJK}]{{2,4}}?)(?=[（(](?:"
                           + "|".join(sorted(_PAREN_ROLE, key=len, reverse=True)) + "|" + _PAREN_KIN + r")[)）])")
_SIGN_ROLE_ITEM = re.compile(r"(?<=[、，,；;])\s*(?:" + "|".join(sorted(_SIGN_ROLES, key=len, reverse=True))
                             + rf")([{_CJK}]{{2,3}})(?=[、，,；;。\s]|$)")
# a person word, then a name that may be an ordinary word (实习同学夏天记录, 其女高洁表示理解, 进修人员向阳、方圆):
# a name when what a person does or a list follows
_PERSON_LEFT = re.compile(r"(?:实习同学|实习生|实习医生|进修医生|进修医师|进修人员|进修护士|规培医生|规培医师|规培生|"
                          r"轮转医生|见习同学|同学|其女|其子|其妻|其夫|其母|其父|其兄|其弟|其姐|其妹|其孙|其孙女)")
_PERSON_DOES = re.compile(r"记录|表示|签字|签名|同意|理解|拒绝|要求|询问|汇报|陪同|陪护|负责|到场|在场|代签|确认|协助|参加|"
                          r"值班|书写|整理|说|诉|称|[、（(]|，身份证")
# a screen name: a handle runs into digits or Latin letters (云淡风轻2019); it is no person's name to cut
_HANDLE_RE = re.compile(rf"(?:发帖人|楼主|网名|网友|用户名|用户|昵称|博主|帖主|回帖人|提问人|来自)\s*[：:]?\s*"
                        rf"([{_CJK}]{{1,8}}[0-9A-Za-z_]+)")
# a pet name at a clause's start before a parent word or a time word (嘟嘟妈妈问, 乐乐今天体检, “豆豆这两天…”)
_PET_CLAUSE = re.compile(r"妈妈|爸爸|奶奶|爷爷|姥姥|姥爷|外婆|外公|家长|今天|昨天|这两天|这几天|最近|现在|已经|一直|早上|晚上")
# (round 7) after an opening quote or a report verb, a doubled name's clause may go on with more habit and time words
_PET_MORE = re.compile(r"妈妈|爸爸|奶奶|爷爷|今天|昨天|这两天|这几天|最近|现在|已经|一直|早上|晚上|平时|平常|从小|每天|总是|老是|经常|"
                       r"上课|在家|在学校|吃饭|睡觉|发烧|咳嗽|哭|吐|不肯|不爱|不吃|不想")
_REPORTED = re.compile("(?:反映|说|发现|觉得|担心|告诉我|提到)$")
# a given name alone between 由/让/请 and what a colleague takes over (由雅婷代管, 让思琪顶班)
_GIVEN_TAKES = re.compile(rf"(?<=[由让请])([{_CJK}]{{2}})(?=代管|代班|顶班|接管|接班|值班|负责|跟进|照看|陪护|陪同|处理)")
# a forum poster's or a commenter's nickname before a colon (楼主小鱼儿：…); one with digits is a handle (_HANDLE_RE)
_POSTER_NICK = re.compile(rf"(?:楼主|网友|发帖人|提问人|回帖人|帖主|博主)([{_CJK}]{{2,4}})(?=[：:])")
_NOT_NICK = re.compile("你|您|说|问|的|好|请|是|也|又|在|们")
# a given name after 老二家的, 老三家的, 大哥家的 (the wife of the family's second son): a name when jieba has it
# as a name or not at all
_FAMILY_WIFE = re.compile(rf"(?:老[大二三四五六七八幺]|[大二三四小]?(?:哥|叔|舅|伯))家的([{_CJK}]{{2}})")
_KIN_HINT = re.compile("家的|[舅姨姑叔伯婶表堂]")  # (cheap pre-check for the two patterns below)
# a kin word of speech, then a given name (你舅建军, 他姑秀兰, 我姨淑芬)
_SPOKEN_KIN = re.compile(rf"(?<=[你我他她咱])(?:[大二三四五六七小老表]?(?:舅舅|舅妈|舅|姨夫|姨父|姨妈|姨|姑父|姑夫|姑妈|姑|"
                         rf"叔叔|婶婶|婶|叔|伯伯|伯母|伯)|表哥|表姐|表弟|表妹|堂哥|堂姐|堂弟|堂妹)([{_CJK}]{{2}})")


def handle_spans(text: str) -> list[tuple[int, int]]:
    """Screen names (发帖人：云淡风轻2019): no name may be cut out of one; callers block these spans."""
    if not any(k in text for k in ("发帖", "楼主", "网", "用户", "昵称", "博主", "帖主", "提问", "来自")):
        return []
    return [m.span(1) for m in _HANDLE_RE.finditer(text)]


def _listed_name(text: str, s: int, e: int, given_ok: bool = True) -> bool:
    """A 2-4 character item of a roster or a list of people is a name: it starts with a surname (weak ones
    too: the list says "people") or is two given-name characters, and is no verb, adverb or function word."""
    v = text[s:e]
    if _guarded(text, s) or v in guard_words() or v in DAY_WORDS or v in LABELS or v[0] in _CONJ \
            or v.endswith(TITLES) or _dict_tag(v) in _NOT_NAME_TAGS or (v[0] in "老小" and surname_at(text, s + 1)):
        return False  # (老马（患者之子）: 老/小 + a surname is the familiar family's, the surname alone)
    sn = surname_at(text, s)
    if sn and e - s > len(sn):
        return True
    return given_ok and e - s == 2 and all(c in given_chars() for c in v)


def roster_names(text: str) -> list[tuple[int, int]]:
    """Names in a duty roster (周一X、周二Y) and after a list label (参加人员：X Y Z, 整理：X)."""
    out = []
    marks = list(_ROSTER_RE.finditer(text)) if ("周" in text or "星期" in text or "班" in text or "线" in text) else []
    pairs = []
    for k, m in enumerate(marks):
        stop = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        v = _LIST_ITEM.match(text, m.end(), stop)
        if v and (v.end() == len(text) or not _CJK_RE.match(text, v.end())):
            linked = k + 1 < len(marks) and bool(_ROW_GAP.fullmatch(text, v.end(), stop))
            pairs.append((v.span(), linked))
        else:
            pairs.append((None, False))
    row = [sp for k, (sp, linked) in enumerate(pairs)
           if sp and ((linked and pairs[k + 1][0]) or (k and pairs[k - 1][1] and pairs[k - 1][0])) and _listed_name(text, *sp)]
    # a row of ordinary nouns is a checklist (白班：毛巾 夜班：床单), not a roster, unless a roster word or one plain
    # name in the row (jieba has it as a name or not at all) says "people"
    if row and (_ROSTER_WORD.search(text) or any(_dict_tag(text[s:e]) in _PLAIN_NAME_TAGS for s, e in row)):
        out += row
    for m in _LIST_LABEL_RE.finditer(text) if ("：" in text or ":" in text) else ():
        out += _list_items(text, m.end(), _listed_name)
    return out


def _list_items(text: str, i: int, ok=None) -> list[tuple[int, int]]:
    """Spans of the separated short items of a list starting at ``i`` (a list label's end); it stops at an item
    that runs on into more Han text, or one ``ok(text, start, end)`` refuses."""
    items = []
    while True:
        v = _LIST_ITEM.match(text, i)
        if not v or (v.end() < len(text) and _CJK_RE.match(text, v.end())) or (ok and not ok(text, *v.span())):
            return items
        items.append(v.span())
        gap = _LIST_SEP.match(text, v.end())
        if not gap or not gap.group():
            return items
        i = gap.end()


def round6_names(text: str) -> list[tuple[int, int]]:
    """Name (role) lists, role + name items next to them, person labels before a person verb, 老二家的X,
    spoken kin + given name, pet names at a clause's start, compound surnames before a title."""
    out = []
    named_role = False
    for m in _NAME_ROLE_RE.finditer(text) if ("（" in text or "(" in text) else ():
        s, e = m.span(1)
        if _listed_name(text, s, e):
            out.append((s, e))
            named_role = True
    if named_role:  # 林海（主麻）、金山（副麻）、巡回护士文静: a role + a name in the same list
        for m in _SIGN_ROLE_ITEM.finditer(text):
            if _listed_name(text, *m.span(1)):
                out.append(m.span(1))
    for m in _PERSON_LEFT.finditer(text) if ("同学" in text or "其" in text or "实习" in text or "进修" in text
                                           or "规培" in text or "轮转" in text) else ():
        for n in (2, 3):
            s, e = m.end(), m.end() + n
            if e <= len(text) and _CJK_RE.match(text, e - 1) and _PERSON_DOES.match(text, e) \
                    and surname_at(text, s) and _listed_name(text, s, e, given_ok=False):
                out.append((s, e))
                while text[e : e + 1] == "、":  # (向阳、方圆)
                    v = _LIST_ITEM.match(text, e + 1, e + 4)
                    if not v or not _listed_name(text, *v.span()):
                        break
                    w = v.end()
                    while w > v.start() + 2 and not _PERSON_DOES.match(text, w) and text[w : w + 1] not in "，,。；;":
                        w -= 1
                    out.append((v.start(), w))
                    e = w
                break
    gc = given_chars()
    for rx in (_FAMILY_WIFE, _SPOKEN_KIN) if _KIN_HINT.search(text) else ():
        for m in rx.finditer(text):
            s, e = m.span(1)
            v = text[s:e]
            if len(_longest_word(text, m.start())) > s - m.start() or len(_longest_word(text, e - 1)) > 1 \
                    or any(c in NOT_GIVEN for c in v):
                continue  # (我姑娘婉婷: 姑娘 is a word, no 姑; 我叔叔得糖|尿病: the name would cut a word)
            if all(c in gc for c in v) and not _guarded(text, s) and (
                    _dict_tag(v) in (None, "nr", "nrt", "nz") or v in _WORD_GIVEN):
                out.append((s, e))
    for m in _DOUBLED.finditer(text):
        s, e = m.span()
        ch = m.group(1)
        # (round 7) a quotation's or a report's subject: “轩轩平时…”, 老师反映豆豆最近…
        opened = s and (text[s - 1] in "“\"「" or _REPORTED.search(text, max(0, s - 3), s)) and _PET_MORE.match(text, e)
        if (s == 0 or text[s - 1] in "，,。！!？?\n“\"：:　 " or opened) and (_PET_CLAUSE.match(text, e) or opened) \
                and ch not in _NOT_DOUBLED \
                and ch not in NOT_GIVEN and text[e : e + 1] != ch and not _guarded(text, s) \
                and _dict_tag(text[s:e]) in (None, "nr", "nrt", "nz", "n", "q", "a", "z", "o"):
            out.append((s, e))  # (嘟嘟妈妈问: jieba calls 嘟嘟 a sound, the parent word says "a child")
    for m in _COMPOUND_TITLE.finditer(text) if _COMPOUND_RE.search(text) else ():
        s = m.start()
        if s and _CJK_RE.match(text, s - 1) and _is_word(text[s - 1 : s + 1]) \
                and not (s > 1 and _is_word(text[s - 2 : s]) and _dict_tag(text[s - 2 : s]) in ("t", "m", "d", "p", "v")):
            continue  # (round 8: 当天|皇甫主任: a time word ends right before the surname, 天皇 is no word there)
        if not _guarded(text, s):
            out.append((s, s + 2))
    return out


_COMPOUND_TITLE = re.compile("(?:" + "|".join(sorted(_STRONG_COMPOUND)) + ")(?=" + "|".join(
    sorted(_ADDRESS_AFTER, key=len, reverse=True)) + ")")


# ---- round 7: names outside wards (village clinics, schools, care homes, blood services, insurance, mediation) ----

_LABEL_ENDS = tuple(sorted(LABELS, key=len, reverse=True))
# 阿 + a given-name character before 姐/哥/嫂/妹 used as address (谢谢阿玲姐, 阿强哥帮我): the kin word says "person"
_A_KIN_AFTER = re.compile("姐|哥|嫂|妹")


def _a_names_outside(text: str) -> list[tuple[int, int]]:
    """阿 + a given-name character right after a person word or role (志愿者阿梅, 护工阿红, 邻居阿珍) or before
    姐/哥 used as address (阿玲姐): not 阿姨, 阿胶, 阿婆 (dictionary words) nor the head of a longer word."""
    out, gc = [], given_chars()
    for m in re.finditer(f"阿([{_CJK}])", text):
        s = m.start()
        cand = text[s : s + 2]
        if m.group(1) not in gc or _dict_tag(cand) not in (None, "nr") or _guarded(text, s) \
                or cand in TITLES or cand in LABELS or len(_longest_word(text, s)) > 2 \
                or (s + 2 < len(text) and _is_word(text[s + 1 : s + 3])):
            continue
        if text[:s].endswith(_LABEL_ENDS) or _A_KIN_AFTER.match(text, s + 2):
            out.append((s, s + 2))
    return out


# a village nickname: a surname + 老 + a birth-order numeral (郝老二, 雷老幺), whole; or a birth-order numeral + 娃/妞/丫/蛋
# opening a clause (三妞发烧两天) when the text counts no siblings (大娃上小学，二娃上幼儿园: the first and second child)
_SURNAME_ORDINAL = re.compile("老[大二三四五六七八九十幺](?![十\\d])")
_ORDINAL_KID = re.compile(r"(?:^|(?<=[，,。；;！!？?\s“\"：:]))[二三四五六七八九幺][娃妞丫蛋](?![娃妞丫蛋])")
_NICK_LEFT = set("，,。；;！!？?：:、 \n“\"的是叫找和跟")
_KID_COUNT = re.compile("[大小老二三四五六七八九幺][娃妞丫宝]")
_NOT_KID_NEXT = re.compile("出生|和|跟|与|都|也|上学|上小学|上幼儿园|上初中|的时候|以后|之后|后")


def _village_nicknames(text: str) -> list[tuple[int, int]]:
    out = []
    for m in _SURNAME_ORDINAL.finditer(text) if "老" in text else ():
        s, e = m.start() - 1, m.end()
        weak_ok = text[s] not in VERBAL_SURNAMES and (s == 0 or text[s - 1] in _NICK_LEFT)  # (邻村的麻老五)
        if s < 0 or not surname_at(text, s, weak_ok=weak_ok) or _guarded(text, s) or _is_word(text[e - 1 : e + 1]) \
                or (s and _CJK_RE.match(text, s - 1) and _is_word(text[s - 1 : s + 1])):
            continue  # (张老大夫: an old doctor; 钻|石王: no surname)
        out.append((s, e))
    for m in _ORDINAL_KID.finditer(text) if any(c in text for c in "娃妞丫蛋") else ():
        s, e = m.span()
        if e < len(text) and _CJK_RE.match(text, e) and not _NOT_KID_NEXT.match(text, e) \
                and len(_KID_COUNT.findall(text)) == 1 and not _is_word(text[e - 1 : e + 1]) and not _guarded(text, s):
            out.append((s, e))
    return out


# a weak surname (于, 向, 文, 方 …) before a title is a person only with a second anchor: a field label's colon before it and
# the clause's end after it (接诊医生：向医生。), a role word right before it (工作人员于护士), or, at a clause's start, what
# only a person does to the speaker after it (于大夫让我们…; not 向医生说明: there 向 is "to")
_WEAK_TITLES = ("护士长", "主任", "医生", "医师", "大夫", "护士", "老师", "院长", "教授", "师傅", "阿姨", "叔叔", "大爷", "大妈",
                "奶奶", "爷爷", "爸爸", "妈妈")
_WEAK_TITLE_RE = re.compile(f"([{''.join(sorted(WEAK_SURNAMES - COMPOUND))}])(?:" + "|".join(_WEAK_TITLES) + ")")
_ROLE_TITLED = ("班主任", "院长", "副院长", "科主任")  # (roles that end in a title: 班主任于老师)
_ELDER_WORDS = ("阿姨", "叔叔", "大爷", "大妈", "奶奶", "爷爷")
_PREPOSITIONS = set("向对给跟和与同在从为由把被让将")
_ASK_LEFT = re.compile("(?:找|请|问问|谢谢|感谢|多谢|麻烦|多亏了|多亏|幸亏|亏了|那位|这位|是|问了|问过|听说|挂了|挂|找了|找过)$")
_PREP_SAFE_DOES = re.compile("负责|让|叫我")  # (工作人员于护士负责…; 患者向医生咨询: 向 is "to")
_TITLE_DOES = re.compile("让|叫我|叫我们|负责|嘱|开了|开的|查房|建议我|告诉我|说我|给我看|给我开|帮我")
_COLON_LEFT = re.compile(r"[：:]\s*$")
_CLAUSE_STOP = re.compile(r"[，,。；;！!？?、）)\s]|$")
# a role, then a strong surname alone, then what a person reports (护士聂报告…, 医生罗说…, 工作人员岳表示…)
_ROLE_SURNAME_DOES = re.compile("报告|说|表示|称|反映|告知|发现|记录|负责|建议|嘱|交代|回复|解释")
# a strong surname + 爸爸/妈妈 (由田爸爸抱来), or a newborn called by the family's surname (新生儿蓝宝宝出生…)
_PARENT_TITLE_RE = re.compile(f"([{_SURN_CHARS}])(?:爸爸|妈妈|宝宝)")
_NEWBORN_LEFT = re.compile("(?:新生儿|早产儿|婴儿|患儿|产妇之子|产妇之女)$")
_PARENT_LEFT = set("，,。；;：:、 \n“\"由和跟与是请让叫找给同")
# surname characters that, after a person word, mostly join, time or direct (爷爷和奶奶, 医生曾建议, 家属与医生)
_LINKING = set("和与及同跟曾向于对给把被在从由为让将")
_ZODIAC = set("鼠牛虎兔龙蛇马羊猴鸡狗猪")  # (龙宝宝, 马宝宝: babies of the year, no family)


# (round 8) staff roles of three or more characters ending in a title (住院医师文医生书写, 上级医师常主任): the role names
# who follows, a title after the surname does not make it a title word
_R8_TITLED_ROLES = tuple(sorted((w for w in LABELS if len(w) >= 3 and w.endswith(("医师", "医生", "护士", "护师"))), key=len, reverse=True))


def _weak_titled(text: str) -> list[tuple[int, int]]:
    out = []
    for m in _WEAK_TITLE_RE.finditer(text):
        s, e = m.start(1), m.end()
        left = text[:s]
        # (round 8) a word asking for a person ends right before the surname (麻烦|文医生: jieba has 烦文)
        ask_word = bool(_ASK_LEFT.search(left)) and len(_ASK_LEFT.search(left).group()) >= 2
        if text[s] in _CONJ or _guarded(text, s) or (s and _CJK_RE.match(text, s - 1) and _is_word(text[s - 1 : s + 1])
                                                        and not ask_word and not left.endswith(_R8_TITLED_ROLES)) \
                or _dict_tag(text[s:e]) not in (None, "nr") or _PLACE_AFTER.match(text, e):
            continue  # (全科医生, 专科护士: a word; 文医生办公室 … a place)
        colon = bool(_COLON_LEFT.search(left)) and bool(_CLAUSE_STOP.match(text, e))
        role = left.endswith(_LABEL_ENDS) and left[-1] not in "我你他她" and (not left.endswith(TITLES) or left.endswith(_ROLE_TITLED)
                                                                          or left.endswith(_R8_TITLED_ROLES)) \
            and (text[s] not in _LINKING or bool(_CLAUSE_STOP.match(text, e)) or bool(_PREP_SAFE_DOES.match(text, e)))
        does = (s == 0 or text[s - 1] in "，,。；;！!？?\n “\"") and text[s] not in "向对给跟和与同在从为由把被让" \
            and bool(_TITLE_DOES.match(text, e))
        # an elder's form of address is seldom after a preposition (今天常阿姨陪她, 管大爷昨晚…), and 找/请/谢谢 ask for a person
        elder = text[s] not in _LINKING and text.startswith(_ELDER_WORDS, s + 1) and not (
            s and text[s - 1] in given_chars() and not (s > 1 and _is_word(text[s - 2 : s])))  # (晓红阿姨: a given name)
        asked = (bool(_ASK_LEFT.search(left)) or text.startswith("的号", e)) and text[e : e + 1] != "处" \
            and text[s] not in _PREPOSITIONS  # (请向医生咨询)
        if colon or role or does or elder or asked:
            out.append((s, s + 1))
    return out


def _role_surname(text: str) -> list[tuple[int, int]]:
    out = []
    for t in ("护士", "医生", "医师", "工作人员", "护工", "大夫", "老师", "社工", "村医", "校医"):
        i = text.find(t)
        while i >= 0:
            s = i + len(t)
            if s + 1 < len(text) and text[s] not in _LINKING and surname_at(text, s, weak_ok=False) == text[s] \
                    and _ROLE_SURNAME_DOES.match(text, s + 1) \
                    and not _is_word(text[s : s + 2]) and not _is_word(text[s : s + 3]) and not _guarded(text, s):
                out.append((s, s + 1))
            i = text.find(t, s)
    return out


def _parent_titled(text: str) -> list[tuple[int, int]]:
    out = []
    for m in _PARENT_TITLE_RE.finditer(text):
        s = m.start(1)
        baby = text[s + 1 : s + 3] == "宝宝"
        if (baby and (text[s] in _ZODIAC or not _NEWBORN_LEFT.search(text, 0, s))) \
                or (not baby and s and text[s - 1] not in _PARENT_LEFT) or _guarded(text, s) \
                or (s and _CJK_RE.match(text, s - 1) and _is_word(text[s - 1 : s + 1])) or _is_word(text[s : s + 2]):
            continue
        out.append((s, s + 1))
    return out


# a full name at a colon: a speaker opening a line or clause (宋春花：好的) or the whole value of a field (认定：韦金花，) —
# a strong surname + two given-name characters that make no ordinary word (春花 and 金花 are nouns, hence no recogniser)
_COLON_NAME = re.compile(rf"(?:^|(?<=\n))([{_SURN_CHARS}][{_CJK}]{{2}})(?=[：:])"
                         rf"|(?<=[{_CJK}][：:])([{_SURN_CHARS}][{_CJK}]{{2}})(?=[，,。；;、]|\s|$)")


def _colon_names(text: str) -> list[tuple[int, int]]:
    out, gc = [], given_chars()
    for m in _COLON_NAME.finditer(text):
        s, e = m.span(1) if m.group(1) else m.span(2)
        v = text[s:e]
        if not surname_at(text, s, weak_ok=False) or _guarded(text, s) or v in guard_words() or v in LABELS \
                or v.endswith(TITLES) or _dict_tag(v) not in (None, "nr") or len(_longest_word(text, s)) > 3 \
                or _is_word(text[s + 1 : e + 1]) or any(c not in gc or c in _NOT_GIVEN_ALONE or c in NOT_GIVEN for c in v[1:]) \
                or (_dict_tag(v[1:]) not in (None, "nr", "n", "nz", "ns", "nrt", "t", "a") and v[1:] not in _WORD_GIVEN):
            continue  # (金银花：, 何首乌： words; 王医生： a title; 张某某： no given name; 危重型： 重型 is no given name)
        out.append((s, e))
    return out


# an ordinary word as a name with a second anchor after it: a sex and an age (江海，男，56岁 / 高峰 男 67岁) where a line
# or a field starts, or an age right after a role or kin word (户主方正今年60岁)
_SEX_AGE = re.compile(r"(?:\s*[，,]\s*|\s+)[男女]性?(?:\s*[，,]\s*|\s+)\d{1,3}\s*岁")
_AGE_NEXT = re.compile(r"(?:\s*[，,]\s*)?(?:今年)?\d{1,3}\s*岁")
_HEAD_START = re.compile(rf"(?:^|(?<=[\n：:；;。]))\s*(?=[{_SURN_CHARS}{''.join(sorted(WEAK_SURNAMES - COMPOUND))}])")
_ROLE_HEAD = re.compile("受害人|伤者|死者|伤员|遇难者|受伤者|患者|病人|患儿|户主|当事人|被保险人|献血者|老人|学生|幼儿")
_WORD_NAME_TAGS = (None, "n", "nr", "nrt", "nrfg", "nz", "ns", "t")


def _word_name_ok(text: str, s: int, e: int) -> bool:
    v = text[s:e]
    return bool(surname_at(text, s)) and not _guarded(text, s) \
        and v not in guard_words() and v not in LABELS and not v.endswith(TITLES) and _dict_tag(v) in _WORD_NAME_TAGS \
        and not any(c in NOT_GIVEN or c in "龄纪" for c in v[1:])  # (患者年龄为41岁, 患者应当在60岁以下)


def _sex_age_names(text: str) -> list[tuple[int, int]]:
    out = []
    starts = [m.end() for m in _HEAD_START.finditer(text)]
    starts += [m.end() for m in _ROLE_HEAD.finditer(text)]  # (伤者黄河，男，34岁)
    for s in starts:
        for n in (3, 2):
            if s + n <= len(text) and _CJK_RE.match(text, s + n - 1) and _SEX_AGE.match(text, s + n) \
                    and _word_name_ok(text, s, s + n):
                out.append((s, s + n))
                break
    for m in _AGE_NEXT.finditer(text) if "岁" in text else ():
        for n in (2, 3):
            s = m.start() - n
            if s > 0 and text[:s].endswith(_LABEL_ENDS) and text[:s][-1] not in "我你他她" \
                    and _word_name_ok(text, s, m.start()) and not _is_word(text[s - 1 : s + 1]):
                out.append((s, m.start()))
                break
    return out


# one given-name character + 姐/哥 as a colleague's form of address (芳姐说…, 红姐，3床…), at a clause's start: the same
# right context as _SIB_ADDRESS; not a word (伟哥, 大哥, 师姐) nor a surname's (王姐 is the bare-surname family's)
_ONE_SIB = re.compile(rf"(?:^|(?<=[，,。；;：:！!？?\n“\"@＠]))([{_CJK}])(?=(?:姐|哥)(?:[，,！!：:。]|说|你|您|$|帮|替|给|陪|带|也|又|都|刚才|今天|昨天|明天))")
# a child's nickname where a household names it (我家小胖今年5岁, 大妞最近…, 虎子今天…): 小/阿/大/二 + a pet character, or
# a strong pet word + 子, at a clause's start or after 我家, before a child's age or a time word
_NICK_CHILD = re.compile(r"(?:^|(?<=[，,。；;！!？?\n“\"])|(?<=我家)|(?<=我们家)|(?<=咱家))((?:[小阿大二三]?[宝胖妞虎龙丫])|(?:虎|柱|铁)子)"
                         r"(?=今年|[\d一二三四五六七八九十两]+(?:岁|个月)|最近|今天|昨天|昨晚|这两天|这几天|一直|总是|老是|又)")


# a surname said before 姓 and a person word (韦姓患者, 一名覃姓男子)
_SURNAME_FIRST = re.compile(rf"([{_SURN_CHARS}{''.join(sorted(WEAK_SURNAMES - COMPOUND))}])姓(?=患者|病人|患儿|男子|女子|男孩|女孩|老人|老太|"
                            "老汉|女士|先生|家属|护士|医生|孩子|村民|学生|老师|夫妇|一家|人家|同学|同事|司机|工人|产妇)")
# 小 + a weak surname after a staff role (护理员小满, 护士小方): the role says "person"
_STAFF_XIAO = re.compile("小([" + "".join(sorted(WEAK_SURNAMES - COMPOUND - set("和与及同跟曾向于对给把被在从由为让将"))) + "])")


# a role outside wards, then a word jieba knows as a name (常青, 方正, 白雪), then a time word or 已/因 and what follows
# (护工常青今天请假, 负责人方正已签字): the role and the clause say "person"
_ROLE_WORD_NAME = re.compile(trie_pattern(w for w in LABELS if len(w) >= 2 and w[-1] in "人者员工医")
                             + rf"([{_CJK}]{{2}})(?=今天|昨天|今日|昨日|已经|已|因|也|刚才|上午|下午|晚上)")


def _role_word_names(text: str) -> list[tuple[int, int]]:
    out = []
    for m in _ROLE_WORD_NAME.finditer(text):
        s, e = m.span(1)
        v = text[s:e]
        if surname_at(text, s) and _dict_tag(v) in ("nr", "nrt", "nrfg") and not _guarded(text, s) and v not in LABELS:
            out.append((s, e))
    return out


# a kin word of one's own family, an ordinary word, then a time word or an adverb of a person's doings (我老公方圆在外地打工,
# 我婆婆金花最近总咳嗽, 我爸向东去年查出…): the kin word and the clause say "person"
_KIN_OWN = ("我老公", "我老婆", "我爱人", "我媳妇", "我丈夫", "我妻子", "我爸", "我妈", "我爸爸", "我妈妈", "我婆婆", "我公公",
            "我岳父", "我岳母", "我哥", "我姐", "我弟", "我妹", "我儿子", "我女儿", "我外婆", "我外公", "我奶奶", "我爷爷",
            "我舅舅", "我姑姑", "我叔叔", "我姨妈", "我老伴", "她老公", "他老婆", "她丈夫", "他妻子")
_KIN_WORD_NAME = re.compile(trie_pattern(_KIN_OWN) + rf"([{_CJK}]{{2}})"
                            "(?=最近|去年|今年|前年|上个月|上周|一直|也|又|在外地|今天|昨天|已经|刚才|前几天|这几天|从小|总是|总)")


def _kin_word_names(text: str) -> list[tuple[int, int]]:
    out, gc = [], given_chars()
    for m in _KIN_WORD_NAME.finditer(text) if "我" in text or "他老婆" in text or "她" in text else ():
        s, e = m.span(1)
        v = text[s:e]
        tag = _dict_tag(v)
        if surname_at(text, s) and not _guarded(text, s) and v not in LABELS and v not in guard_words() \
                and not any(c in NOT_GIVEN or c in "龄纪" for c in v) \
                and (tag in (None, "nr", "nrt", "nrfg", "nz") or (tag in ("n", "ns") and all(c in gc for c in v))):
            out.append((s, e))
    return out


# a married woman named by her surname + 氏 after a person word (患者韦氏，女, 其妻子韦氏代为提交); never before more of a
# word (韦氏量表, 巴氏涂片, 魏氏法: eponyms)
_SURNAME_SHI = re.compile(rf"(?:患者|病人|其妻子|其妻|其母亲|其母|妻子|母亲|家属|之妻|之母|老伴|产妇|死者|伤者)([{_SURN_CHARS}])氏"
                          r"(?=[，,。；;、（(\s]|$|代|签|同意|自诉|诉|称|表示|陪同)")


def _short_forms(text: str) -> list[tuple[int, int]]:
    out, gc = [], given_chars()
    for m in _SURNAME_SHI.finditer(text) if "氏" in text else ():
        out.append(m.span(1))
    for m in _SURNAME_FIRST.finditer(text) if "姓" in text else ():
        s = m.start(1)
        if not _guarded(text, s):
            out.append((s, s + 1))
    for m in _STAFF_XIAO.finditer(text) if "小" in text else ():
        s = m.start(1)
        if text[: s - 1].endswith(_STAFF_ENDS) and not _is_word(text[s : s + 2]) and not _guarded(text, s - 1):
            out.append((s, s + 1))  # (the surname, as for 小王: 护士小心地, 小时候, 小结 are words)
    for m in _ONE_SIB.finditer(text) if ("姐" in text or "哥" in text) else ():
        s = m.start(1)
        c = text[s]
        if c in gc and c not in NOT_GIVEN and not surname_at(text, s, weak_ok=False) \
                and _dict_tag(text[s : s + 2]) in (None, "nr") and not _guarded(text, s):
            out.append((s, s + 1))
    for m in _NICK_CHILD.finditer(text) if any(c in text for c in "宝胖妞虎龙丫柱铁") else ():
        s, e = m.span(1)
        if e - s >= 2 and not _guarded(text, s) and _dict_tag(text[s:e]) not in ("v", "d", "m", "q", "r", "p", "c") \
                and not (text[s] in "大二三" and len(_KID_COUNT.findall(text)) > 1):  # (大宝今年6岁，二宝3岁: birth order)
            out.append((s, e))
    return out


def round7_names(text: str) -> list[tuple[int, int]]:
    """The round-7 families (see docs/deidentify.md, round 7)."""
    out = _a_names_outside(text) if "阿" in text else []
    out += _village_nicknames(text) + _weak_titled(text) + _role_surname(text) + _parent_titled(text)
    out += _colon_names(text) if ("：" in text or ":" in text) else []
    out += _sex_age_names(text) if "岁" in text else []
    out += _short_forms(text) + _role_word_names(text) + _kin_word_names(text)
    gc = given_chars()
    for m in _GIVEN_TAKES.finditer(text) if ("由" in text or "让" in text or "请" in text) else ():
        s, e = m.span(1)
        v = text[s:e]
        if all(c in gc and c not in NOT_GIVEN for c in v) and _dict_tag(v) in (None, "nr", "nrt", "nz") and not _guarded(text, s) \
                and v not in LABELS and not _is_word(text[s - 1 : s + 1]):
            out.append((s, e))  # (由专人负责, 由此负责: words; 由医生负责: 医 is no given-name character)
    for m in _POSTER_NICK.finditer(text) if ("主" in text or "网友" in text or "人" in text) else ():
        s, e = m.span(1)
        if not _NOT_NICK.search(text, s, e) and text[s:e] not in LABELS and _dict_tag(text[s:e]) in (None, "nr", "nrt", "nz"):
            out.append((s, e))  # (no guard-list check: the poster label says "nickname", 小鱼 is guarded as food)
    return out


# ---- round 8 (parts 13-14 seen) ----
# A role that names one person, then a full name: the role is the anchor and the name need not be on any list of what
# follows it (上级医师方志远审阅, 签字人喻强，, 长子龙万才、, 受试者尚宏伟筛选期…, 购药人黄河清，, 接报医生计春来评估后). What may follow
# such a role instead is an ordinary continuation (上级医师查房, 长子高血压, 受试者血压正常): a verb, an adverb, a time word,
# a dictionary word that is no name or place. Kin and staff words of LABELS, the birth order of children, trial and
# purchase parties, and any word of up to four characters ending in 医生/医师/护士/药师/技师 (公卫医师, 接报医生).
_R8_NOT_ANCHOR = frozenset(("患者", "病人", "患儿", "产妇", "家属", "本人", "我叫", "我是", "我和", "我跟", "我与",
                                       "委托", "科的", "兄弟", "朋友", "同事", "邻居", "同学", "宝宝", "我家宝宝", "爸爸", "妈妈",
                                       "主任", "副主任", "院长", "医生", "医师", "护士", "大夫", "教授", "助手", "助理", "签名",
                                       "签字", "姓名", "麻醉", "专员", "客户", "村民", "住户", "孕妇", "组长", "科长"))
_R8_ROLES = tuple(sorted({w for w in LABELS if len(w) >= 2 and w not in _R8_NOT_ANCHOR}
                         | {"长子", "次子", "三子", "幼子", "独子", "长女", "次女", "三女", "幼女", "独女", "长孙", "长孙女",
                            "受试者", "购药人", "取药人", "代购人", "签字人", "报告人", "填报人", "送检人", "接报人", "来访者",
                            "咨询者", "求助者", "投诉人", "举报人", "就诊人", "患者家属", "其外孙女", "其外孙子", "其曾孙",
                            "其曾孙女"}, key=len, reverse=True))
# (four patterns, not one alternation: Python's regex engine scans a single alternation that opens with a class at
# every position several times slower than its parts one by one)
_R8_AFTER_ANCHOR = r"(?:\s*[：:]\s*|\s?)"
_R8_ROLE_RE = re.compile("(?P<role>" + trie_pattern(_R8_ROLES) + r")(?:\s*[：:]\s*|[“\"「]|\s?)")
_R8_ANCHORS = (None,
               re.compile(rf"(?<![{_CJK}])[{_CJK}]{{1,4}}(?:医生|医师|护士|药师|技师)" + _R8_AFTER_ANCHOR),
               # any field named after who fills it, with its colon (购药人：, 接报员：, 陪诊者：)
               re.compile(rf"(?<![{_CJK}])[{_CJK}]{{1,4}}[人者员](?=\s*[：:])" + _R8_AFTER_ANCHOR),
               # a school class (初二(3)班, 三年级2班): the pupil named after it
               re.compile(r"(?:(?:初|高|小学)?[一二三四五六七八九]年?级?\s*[（(]\d{1,2}[）)]\s*班|[一二三四五六]年级\d{1,2}班)"
                          + _R8_AFTER_ANCHOR))


_R8_STAFF_TITLES = ("医生", "医师", "护士", "药师", "技师")


def _r8_anchor_ends(text: str, roles: list[tuple[str, int]]) -> list[int]:
    """Where a role anchor of the round-8 rules ends (its colon or space included), each once, in order; ``roles``:
    the (role, end) matches of ``_R8_ROLE_RE``, found once for all the round-8 rules."""
    ends = {e for _, e in roles}
    for k, pat in enumerate(_R8_ANCHORS):
        if k == 0 or k == 3 and "班" not in text or k == 1 and not any(w in text for w in _R8_STAFF_TITLES):
            continue
        if k == 2 and "：" not in text and ":" not in text:
            continue
        ends.update(m.end() for m in pat.finditer(text))
    return sorted(ends)


# what a person named after a role does next (…审阅签字, …评估后, …筛选期, …已签字, …在旁陪同)
_R8_DOES = re.compile("[均都也亦皆还]?(?:审阅|审核|审签|签字|签名|签署|评估|筛选|入组|出组|陪同|陪护|表示|同意|拒绝|确认|记录|负责|到场|在场|代签|"
                      "办理|接诊|诊查|查看|告知|回复|随访|报告|发现|称|诉|述|说|在旁|已|因|于(?=\\d)|今年|现年|年龄|要求|申请|购买|领取)")
_TITLE_START = re.compile(trie_pattern(TITLES))
_R8_STOP = set("的了是在和与及或等着过吗呢吧啊也都又就均皆亦仍还已曾将正")  # (…国梁均同意: 均 is "all")
# (what never starts a given name: function words, sex, age and date characters; not STRONG_STOP, which holds the
# characters of titles: 方志远, 宋士杰)
_R8_GIVEN_STOP = set("的了是在和与及或等为于因由被把将向对从自到至给让请说诉称要已未不无有没也都又再还就即便男女岁性年月日号")
_R8_NAME_TAGS = (None, "nr", "nrt", "nrfg", "nz", "ns")


def _r8_end_ok(text: str, e: int) -> bool:
    return e >= len(text) or not "\u4e00" <= text[e] <= "\u9fff" or bool(_R8_DOES.match(text, e))


def _r8_full_name(text: str, i: int) -> int:
    """Length of a full name (surname + one or two given characters) right after a person anchor at ``i``,
    0 if what follows is an ordinary continuation (a verb, a time word, a dictionary word that is no name)."""
    sn = surname_at(text, i)
    if not sn or not (_r8_end_ok(text, i + len(sn) + 2) or _r8_end_ok(text, i + len(sn) + 1)) \
            or _guarded(text, i) or text.startswith(_LABEL_ENDS, i) or _TITLE_START.match(text, i + len(sn)):
        return 0  # (the end first: the cheapest; 医生|申医生: a title, no given name)
    first = _longest_word(text, i)
    if len(first) >= 2 and _dict_tag(first) not in _R8_NAME_TAGS and not (len(first) == 2 and _dict_tag(first) == "n"):
        return 0  # 上级医师|查房, 长子|高血压, 受试者|同意 (a noun of two may be a surname + given: 方志|远, 游子|涵)
    # 我妈|云南人: a weak surname heading a place or a proper noun takes only given-name characters after it (安国庆 yes;
    # 黄河清 has a strong surname)
    strict = sn in WEAK_SURNAMES and len(first) >= 2 and _dict_tag(first) not in (None, "nr", "nrt", "nrfg", "n")
    for n in (2, 1):
        e = i + len(sn) + n
        if strict and not all(c in given_chars() for c in text[i + len(sn) : e]):
            continue
        v = text[i:e]
        if e > len(text) or not all("\u4e00" <= c <= "\u9fff" for c in v) or not _r8_end_ok(text, e):
            continue
        given = v[len(sn):]
        if len(given) == 2 and (_R8_DOES.match(text, e - 1) or text[e - 1] == "代"):
            continue  # (司马红|诉, 董磊|代签: the second character starts what the person does)
        if given[:1] in _R8_GIVEN_STOP or given[-1:] in _R8_STOP or v in guard_words():
            continue
        if sn in VERBAL_SURNAMES and (len(given) == 1 or not all(c in given_chars() for c in given)):
            continue  # 受试者|于第30天, 家属|应及时: a verbal surname only with two given-name characters (方志远)
        if len(given) == 1 and given not in given_chars():
            continue  # (a surname and one character: 签字人|喻强 yes; 长子|龙头 no)
        tag = _dict_tag(v)
        if tag not in _R8_NAME_TAGS or (len(v) == 2 and tag == "nr" and sn in WEAK_SURNAMES) or (len(v) == 2 and tag in ("ns", "nz")):
            continue  # 长子|高烧, 受试者|安静 (jieba tags 安静 nr: an ordinary word needs a field); 我老公|东西 (ns)
        if _is_word(text[e - 1 : e + 1]) and not _R8_DOES.match(text, e):
            continue  # the name's end starts a word (…|龙头疼)
        return len(v)
    return 0


def _r8_unlisted_name(text: str, i: int) -> int:
    """After a person role and its colon, three characters that fill the field (a boundary right after) are a name
    even when the first is on no surname list (接诊医生：凡宇航，), when they make no dictionary word, their first two
    none either, and the last two are given-name characters (记录者：同上，, 审核人：已审核， stay)."""
    v = text[i : i + 3]
    if len(v) < 3 or (i + 3 < len(text) and "\u4e00" <= text[i + 3] <= "\u9fff") or not all("\u4e00" <= c <= "\u9fff" and c not in _R8_GIVEN_STOP for c in v) \
            or not (i + 3 == len(text) or not "\u4e00" <= text[i + 3] <= "\u9fff") or _guarded(text, i) \
            or text.startswith(_LABEL_ENDS, i) or surname_at(text, i):
        return 0
    gc = given_chars()
    if _dict_tag(v) is not None or _dict_tag(v[:2]) is not None or _dict_tag(v[1:]) not in (None, "nr", "nz") \
            or not all(c in gc for c in v[1:]) or len(_longest_word(text, i)) > 1:
        return 0
    return 3


def _role_full_names(text: str, roles: list[tuple[str, int]]) -> list[tuple[int, int]]:
    out = []
    for i in _r8_anchor_ends(text, roles):
        if i + 2 > len(text) or not "\u4e00" <= text[i] <= "\u9fff" or not "\u4e00" <= text[i + 1] <= "\u9fff":
            continue  # (a cheap check first: most anchors are followed by no name at all)
        if text[i] in "子女" and text[i - 1] in "孙侄儿甥":
            continue  # (其孙|子鲁浩: the kin word goes on)
        n = _r8_full_name(text, i) or _r8_unlisted_name(text, i)  # (the latter: the value must fill its clause)
        if n:
            out.append((i, i + n))
    return out


# the same roles, then a given name alone (儿媳喜梅，, 社工阿依古丽。, 长子建军、): two given-name characters that jieba
# has as a name or not at all, or 阿 + two or three characters (names of the minorities, 阿依古丽, and southern 阿X),
# before a boundary or what a person does; an ordinary word (甘甜, 平安) only before what a person does (孙女甘甜在旁陪同)
_R8_KIN_ROLES = tuple(w for w in _R8_ROLES if not w.endswith(("医生", "医师", "护士", "药师", "技师")))
_R8_KIN_ROLE_SET = frozenset(_R8_KIN_ROLES)
_R8_AFTER_GIVEN = re.compile(rf"[^{_CJK}]|$")


def _r8_given_name(text: str, i: int) -> int:
    if i >= len(text) or not "\u4e00" <= text[i] <= "\u9fff" or text.startswith(_LABEL_ENDS, i) or _guarded(text, i):
        return 0
    if text[i : i + 1] == "阿":
        for n in (4, 3):  # (阿依古丽, 阿珍珍): the whole run up to a boundary
            v = text[i : i + n]
            if len(v) == n and all("\u4e00" <= c <= "\u9fff" and c not in _R8_GIVEN_STOP for c in v[1:]) \
                    and _R8_AFTER_GIVEN.match(text, i + n) and _dict_tag(v) in (None, "nr", "nrt", "nrfg") \
                    and v[-1] not in "林素平酮唑嗪胺醇酯钠酸片胶丸霉星":  # (阿莫西林, 阿奇霉素: drugs, not 阿米娜)
                return n
        return 0
    v = text[i : i + 2]
    if len(v) < 2 or any(c in _R8_GIVEN_STOP or not "\u4e00" <= c <= "\u9fff" for c in v) or v in LABELS \
            or v in DAY_WORDS or v in guard_words() or v in _CHAT_ADDRESS:
        return 0
    tag, gc = _dict_tag(v), given_chars()
    if tag in (None, "n", "a", "ns", "nr", "nrt", "nrfg") and surname_at(text, i, weak_ok=False) and _R8_DOES.match(text, i + 2) \
            and not _is_word(text[i + 1 : i + 3]):
        return 2  # (孙女甘甜在旁陪同; 儿子平时在外: 平时 is a time word; 女儿高烧: no strong surname)
    if not all(c in gc for c in v):
        return 0
    if tag in (None, "nr", "nrt", "nrfg") and (_R8_AFTER_GIVEN.match(text, i + 2) or _R8_DOES.match(text, i + 2)):
        return 2  # (not nz: jieba has 孝顺 so)
    return 0


def _role_given_names(text: str, roles: list[tuple[str, int]]) -> list[tuple[int, int]]:
    out = []
    gc = given_chars()
    for role, e in roles:
        n = _r8_given_name(text, e) if role in _R8_KIN_ROLE_SET and (text[e : e + 1] in gc or text[e : e + 1] == "阿"
                                                                      or surname_at(text, e, weak_ok=False)) else 0
        if n:
            out.append((e, e + n))
    return out


# a list of people under a label (复查名单：X、Y、Z, 参加人员：X Y Z): once two of its items are plain names, an item that
# starts with a surname is a name even when it is an ordinary word the guard list keeps elsewhere (安静, 平安)
_R8_LIST_LABEL = re.compile(rf"[{_CJK}]{{0,4}}名单\s*[：:]\s*")
# a person label with its colon, then an ordinary word that fills the field up to the next label or the line's end
# (交班护士：安静 接班护士：…): the same guard words are names there; not after a speaker (患者：安静。)
_R8_FIELD_END = re.compile(r"\s+[^\s：:，,。]{1,8}[：:]|\s{2,}|\s*$|\s*\n")


def _r8_item_ok(text: str, s: int, e: int) -> bool:
    v = text[s:e]
    return bool(surname_at(text, s)) and e - s > len(surname_at(text, s)) and v not in DAY_WORDS and v not in LABELS \
        and v[0] not in _CONJ and not v.endswith(TITLES) and _dict_tag(v) not in (*_NOT_NAME_TAGS, "t")


_LABEL_SET = frozenset(w for w in LABELS if len(w) >= 2)
_R8_COLON = re.compile("[：:]")


def _r8_lists_and_fields(text: str) -> list[tuple[int, int]]:
    out = []
    colon = "：" in text or ":" in text
    for m in (*(_R8_LIST_LABEL.finditer(text) if "名单" in text else ()), *_LIST_LABEL_RE.finditer(text)) if colon else ():
        items = _list_items(text, m.end())
        if sum(_listed_name(text, a, b) for a, b in items) >= 2:
            out += [(a, b) for a, b in items if _listed_name(text, a, b) or _r8_item_ok(text, a, b)]
    for c in (m.start() for m in _R8_COLON.finditer(text)) if ("：" in text or ":" in text) else ():
        # (the label right before the colon, found from the colon: a scan of every position with _LABEL_RE costs more)
        label = ""
        for k in range(7, 1, -1):
            if text[c - k : c] in _LABEL_SET:
                label = text[c - k : c]
                break
        if not label or label in _SPEAKERS:
            continue
        s = c + 1
        while s < len(text) and text[s] in " \t_　":
            s += 1
        for e in (s + 3, s + 2):
            if e <= len(text) and _CJK_RE.fullmatch(text, e - 1, e) and all(_CJK_RE.match(c) for c in text[s:e]) \
                    and _R8_FIELD_END.match(text, e) and _r8_item_ok(text, s, e) \
                    and _dict_tag(text[s:e]) in (None, "nr", "nrt", "nz", "n", "a", "ns"):
                out.append((s, e))
                break
    return out


# a role field's whole value is a bare strong surname (调度员：房，工号…, 记录人：邵；): the colon says "who"
_R8_SURNAME_FIELD = re.compile(rf"(?:^|(?<=[\s，,；;。（(\d】]))[{_CJK}]{{1,5}}?[人者员师生士]\s*[：:]\s*([{_SURN_CHARS}])(?=[，,；;。\s]|$)")
# a pupil, a resident or a patient named before how others call them (三年级冉冉同学, 老人常青爷爷, 患者秀兰奶奶)
_R8_CALLED = re.compile(rf"(?:[一二三四五六]年级|初[一二三]|高[一二三]|老人|患者|学生|幼儿|住户|院民)([{_CJK}]{{2}})"
                        "(?=同学|小朋友|爷爷|奶奶|阿姨|叔叔|大爷|大妈|婆婆|伯伯)")
# a chat speaker called 阿X at a line's start or after the group's name (【病区群】阿珍：), and a given name in quotes
# after a person word (家属“大伟”发来…, 女儿"丹丹"说)
_R8_A_SPEAKER = re.compile(rf"(?:^|(?<=[\n】\]]))(阿[{_CJK}]{{1,2}})(?=[：:])")
_R8_QUOTED = re.compile(rf"(?:家属|患者|病人|儿子|女儿|孙子|孙女|老公|老婆|丈夫|妻子|爱人|同事|朋友|邻居)[“\"「]([{_CJK}]{{2}})[”\"」]")


# a strong surname + 主治 (the attending, 秦主治审核) before what the attending does: 本方主治, 该药主治 are indications
_R8_ATTENDING = re.compile(rf"([{_SURN_CHARS}])主治(?=审核|审阅|查房|签字|签名|意见|指示|认为|建议|同意|说|看过|看了|交代|医师|医生)")


# 小 + a given-name character opening a quotation, then a question after someone (“小军什么时候来看我”, “小伟还没回来”)
_R8_QUOTED_XIAO = re.compile(rf"(?<=[“\"「])(小[{_CJK}])(?=什么时候|啥时候|怎么还|还没|还不|回来|来了没|来看|在哪|呢)")
_R8_NOT_XIAO = frozenset(("小孩", "小儿", "小便", "小时", "小心", "小姐", "小伙", "小区", "小学", "小组", "小腿", "小肠", "小脑",
                          "小米", "小麦", "小事", "小病", "小手", "小脚", "小朋", "小弟", "小妹", "小哥", "小两", "小狗", "小猫",
                          "小鱼", "小鸟", "小猪", "小牛", "小羊", "小兔", "小鬼", "小丑", "小偷", "小将", "小虫"))


def _r8_address_forms(text: str) -> list[tuple[int, int]]:
    out, gc = [], given_chars()
    for m in _R8_QUOTED_XIAO.finditer(text) if "小" in text and ("“" in text or '"' in text or "「" in text) else ():
        s, e = m.span(1)
        v = text[s:e]
        if v[1] in gc and v not in _R8_NOT_XIAO and not _guarded(text, s) and _dict_tag(v) in (None, "nr", "nrt", "n", "nz"):
            out.append((s, e))
    for m in _R8_ATTENDING.finditer(text) if "主治" in text else ():
        s = m.start(1)
        if text[s] not in WEAK_SURNAMES and not _guarded(text, s) and not (s and _CJK_RE.match(text, s - 1)):
            # (after a slash, a bracket or a clause's start: 訾红|梅主治医师 is a full name before the title)
            out.append((s, s + 1))
    for c in (m.start() for m in _R8_COLON.finditer(text)) if ("：" in text or ":" in text) else ():
        # (from the colon: a role ending in 人/者/员/师/生/士 right before it, then the field's value)
        for start in range(max(0, c - 6), c - 1) if 0 < c and text[c - 1] in "人者员师生士" else ():
            m = _R8_SURNAME_FIELD.match(text, start)
            if m:
                s = m.start(1)
                if text[s] not in WEAK_SURNAMES and not _guarded(text, s):
                    out.append((s, s + 1))
                break
    for m in _R8_CALLED.finditer(text) if any(w in text for w in ("同学", "小朋友", "爷爷", "奶奶", "阿姨", "叔叔", "大爷", "大妈", "婆婆", "伯伯")) else ():
        s, e = m.span(1)
        v = text[s:e]
        tag = _dict_tag(v)
        if v not in LABELS and not _guarded(text, s) and all(c in gc for c in v) \
                and (v[0] == v[1] or tag in (None, "nr", "nrt", "nrfg") or (tag == "a" and surname_at(text, s))):
            # (老人常乐爷爷: an adjective after a surname is a name here; 老人白发爷爷: a noun is not)
            out.append((s, e))
    for m in _R8_A_SPEAKER.finditer(text) if "阿" in text else ():
        s, e = m.span(1)
        if _dict_tag(text[s:e]) in (None, "nr", "nrt") and text[s:e] not in ("阿姨", "阿婆", "阿公", "阿妈", "阿爸"):
            out.append((s, e))
    for m in _R8_QUOTED.finditer(text) if ("“" in text or '"' in text or "「" in text) else ():
        s, e = m.span(1)
        v = text[s:e]
        if all(c in gc for c in v) and _dict_tag(v) in (None, "nr", "nrt", "nrfg") and not _guarded(text, s) and v not in LABELS:
            out.append((s, e))
    return out


# family duties shared out by given name, two clauses or more (建军明天早上去排号，丽娟中午送饭): a given name at a
# clause's start, a time of day, then coming, going, bringing or taking over; one clause alone is no rota
_R8_DUTY = re.compile(rf"(?:^|(?<=[，,。；;！!？?\n\s]))([{_CJK}]{{2}})(?=(?:今天|明天|后天|今晚|明早|上午|中午|下午|晚上|早上|夜里|白天)"
                      "[^，,。；;\n]{0,4}?(?:去|来|送|陪|守|值|换|接|排|看|过来|回来))")


def _r8_duty_names(text: str) -> list[tuple[int, int]]:
    gc, found = given_chars(), []
    for m in _R8_DUTY.finditer(text):
        s, e = m.span(1)
        v = text[s:e]
        if all(c in gc and c not in _R8_GIVEN_STOP for c in v) and v not in DAY_WORDS and v not in LABELS \
                and _dict_tag(v) in (None, "nr", "nrt", "nrfg", "n", "nz") and not _guarded(text, s) and v not in _R8_NOT_XIAO:
            found.append((s, e))
    return found if len(found) >= 2 else []


# the patient or a party, then a word of a strong surname, then what one does with the consent (患者万里已知晓手术方案, 受试者
# 高山已签字): jieba calls 万里 a numeral, 高山 a noun; kin and party words (父母, 家属, 子女) are who consents instead
_R8_CONSENTS = re.compile(rf"(?:患者|病人|受试者|产妇|孕妇|伤者)([{_CJK}]{{2}})(?=已经?(?:知晓|知情|知悉|签字|签名|同意|理解|了解)|本人签字)")


def _r8_consenting(text: str) -> list[tuple[int, int]]:
    out = []
    for m in _R8_CONSENTS.finditer(text) if "已" in text or "本人" in text else ():
        s, e = m.span(1)
        v = text[s:e]
        if surname_at(text, s, weak_ok=False) and not _guarded(text, s) and v not in LABELS and v not in DAY_WORDS \
                and not any(c in "父母子女儿孙夫妻兄弟姐妹亲属家方双及与和" for c in v) and _dict_tag(v) not in ("d", "p", "c", "r", "v", "vn", "t"):
            out.append((s, e))
    return out


def round8_names(text: str) -> list[tuple[int, int]]:
    """The round-8 families (see docs/deidentify.md, round 8)."""
    roles = [(m.group("role"), m.end()) for m in _R8_ROLE_RE.finditer(text)]
    out = _role_full_names(text, roles) + _role_given_names(text, roles) + _r8_lists_and_fields(text) + _r8_address_forms(text)
    out += _r8_consenting(text)
    return out + (_r8_duty_names(text) if any(w in text for w in ("天", "午", "晚", "早", "夜")) else [])
