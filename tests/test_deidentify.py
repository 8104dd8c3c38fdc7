"""De-identification: the issue's misses and false positives, the independent hand-labelled set, fields,
manifest, reversible mode, two processes, and the template cases as a consistency check only."""

import json
import os
import random
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hypnos.common.runner import load_recipe, run_recipe
from hypnos.data.deidentify import SYNTH_HOSPITALS, Deidentifier, evaluate, synthetic_cases, valid_resident_id

D = Deidentifier()


def _found(text: str, kind: str) -> list[str]:
    return [text[s.start : s.end] for s in D.find(text) if s.type == kind]


# ---- the findings, one case each (all fail on the scrubber before issue 13) -------------------

@pytest.mark.parametrize("text,name", [
    ("主刀医师：陈志刚", "陈志刚"), ("麻醉医师：林晓燕", "林晓燕"), ("记录者：赵敏", "赵敏"),
    ("医师签名：周文斌", "周文斌"), ("家属签字：王秀英", "王秀英"), ("患者：李四", "李四"),
    ("姓名 张三", "张三"), ("联系人为其丈夫何伟）", "何伟"), ("病史由之子王磊提供", "王磊"),
    ("护士长吴静", "吴静"), ("患者诸葛明，男，40岁", "诸葛明"), ("麻醉医师欧阳娜娜到场", "欧阳娜娜"),
])
def test_names_by_label_role_kinship_and_compound_surname(text, name):
    assert _found(text, "name") == [name], D.find(text)


@pytest.mark.parametrize("text", [
    "患者高热3天", "患者黄疸，皮肤瘙痒", "患者高龄，合并慢阻肺", "患者曾于2018年行阑尾切除术", "由高年资医生实施麻醉",
    "出院带药：王氏保赤丸 1瓶", "请向医生咨询麻醉方式", "主任医师查房后指示", "上级医师查房",
    "患者张口困难，Mallampati III级", "谢谢医生！", "患者签名时间：2024-04-02 16:20", "班主任说孩子总咳嗽",
    "我喝了许多水医生说没关系",
])
def test_clinical_words_that_look_like_names_stay(text):
    assert D.scrub(text)[0] == text, D.find(text)


# ---- names with no label: slots, lists, parentheses (issue 13 follow-up; all miss before it) ---------

@pytest.mark.parametrize("text,names", [
    ("家属（患者外孙）伏建业已签字。", ["伏建业"]),          # kinship in parentheses, then the name
    ("我（单丽君）已阅读上述内容。", ["单丽君"]),             # the name in parentheses after 我
    ("病理科主任管淑华查房后建议复查。", ["管淑华"]),          # weak surname 管 between a role and 查房
    ("由邝志远、葛蕾、单波组成会诊小组。", ["邝志远", "葛蕾", "单波"]),  # a list after 由
    ("郝建林、阎婷婷两位医师共同完成手术。", ["郝建林", "阎婷婷"]),    # a list counted by 两位
])
def test_names_in_slots_lists_and_parentheses(text, names):
    assert _found(text, "name") == names, D.find(text)


@pytest.mark.parametrize("text", [
    "由于情绪波动，血压升高。", "请及时告知医生。", "经皮引流、胆囊切除术均可选择。", "本同意书经双方签字后生效。",
    "黄芪、党参、白术各10g。", "由全科医生随访。", "由康复医师指导训练。", "请相关科室会诊。", "每日两次，每次两片。",
    "常规两位护士核对。", "由值班医生告知家属。",
])
def test_slot_and_list_rules_keep_clinical_words(text):
    assert D.scrub(text)[0] == text, D.find(text)


# ---- names the issue-13 round 3 rules find (each fails on the scrubber before them) -------------------

@pytest.mark.parametrize("text,names", [
    ("管床医师：庹建华、郇晓梅", ["庹建华", "郇晓梅"]),           # surnames from the full list (庹, 郇)
    ("病史由患者配偶禚玉梅提供。", ["禚玉梅"]),
    ("证人：常乐  与患者关系：邻居", ["常乐"]),                  # an ordinary word at a field end (证人 label)
    ("家属（签字）：芮红梅", ["芮红梅"]),                         # a remark in parentheses before the colon
    ("患者授权其妹花玉洁查阅病历。", ["花玉洁"]),                 # 其妹, weak surname 花 after kinship
    ("委托人满春生代为签署。", ["满春生"]),                       # 满 (a word: 满月) after a role
    ("患者时光自诉头晕2天。", ["时光"]),                          # patient + name + self-report verb
    ("术前由值班医生麻建华告知风险。", ["麻建华"]),               # 麻 (麻醉) between a role and a verb
    ("经治医生冷建国已告知。", ["冷建国"]),                       # 经治医生 (jieba has 生冷)
    ("陪护人：满小凤", ["满小凤"]),
    ("由庹伟主刀，谯明一助。", ["庹伟", "谯明"]),                 # a name before an operation role
    ("审核者：隗振华", ["隗振华"]),                               # a field role with 者
    ("规培医师时雨协助换药。", ["时雨"]),                         # role + name + 协助
    ("可以让时光护士帮忙预约。", ["时光"]),                       # 让 + name + title
    ("我妈叫封桂兰，今年67岁。", ["封桂兰"]),                     # kinship + 叫
    ("我老公名叫安然，今年40岁。", ["安然"]),                     # 名叫 + an ordinary word closing its clause
    ("黄海波主任查房", ["黄海波"]),                               # a full name before a title and 查房
    ("我和宓丽都是乙肝携带者。", ["宓丽"]),                       # 我和 + name
    ("孩子叫覃浩然，6岁，发烧两天了。", ["覃浩然"]),               # 叫 after a child word
    ("我是上周来看过的病人，叫秦淑芬。", ["秦淑芬"]),               # 叫 at a clause's start
    ("会诊意见（梁国华，主任医师）：建议加用抗凝。", ["梁国华"]),   # name, comma, title in parentheses
    ("术者签名：_____蓝建业_____", ["蓝建业"]),                   # the underscores of a paper form
    ("录入员：邰佳佳", ["邰佳佳"]),                               # who typed the record
    ("患者孙子晏鹏飞表示理解。", ["晏鹏飞"]),                     # 孙子 is kinship, not 孙 + a name
    ("感谢方圆医生的耐心解答！", ["方圆"]),                       # 感谢 + name + title
    ("@钱多多 你好，复查结果出来了吗？", ["钱多多"]),              # a chat mention
    ("患者的女儿叫夏天，今年12岁。", ["夏天"]),                   # kinship + 叫 + a time word closing its clause
    ("医生您好，我爸爸林森昨天做了胃镜。", ["林森"]),             # 我爸爸 (我爸 was a label, 我爸爸 not)
    ("请明月医生会诊。", ["明月"]),                               # 月 is a given-name character too
    ("患者文静，女，32岁，因腹痛入院。", ["文静"]),               # an ordinary word, then ，女，
    ("患者家属高山陪同就诊。", ["高山"]),                         # a kinship word + name + 陪同
    ("交接护士：甘露。", ["甘露"]),                               # a role field, not a speaker: 。 ends it
    ("患者家属（妻子：安琪）表示同意手术。", ["安琪"]),
    ("麻醉医师：敖雪峰/鄂丽", ["敖雪峰", "鄂丽"]),                 # a list with /
    ("由王医生和付医生共同完成手术。", ["王", "付"]),              # a bare surname after 由 + title
    ("医方代表：宓强", ["宓强"]),                                 # the parties of a consent form
    ("海洋医生说我需要做胃镜。", ["海洋"]),                       # an ordinary noun at a clause's start,
    ("术中高山医师行桡动脉穿刺。", ["高山"]),                     # then a title and what a doctor does
    ("马力签字确认。", ["马力"]),                                 # or a person verb
    ("患者高山因胸痛入院。", ["高山"]),                           # patient + noun + the head of an
    ("患者海洋于3天前出现发热。", ["海洋"]),                      # admission sentence (因, 于 + a date)
    ("复苏室护士金星记录：患者清醒。", ["金星"]),                   # a role + name + 记录
    ("我妈于丹最近失眠。", ["于丹"]),                             # 于 after kinship, no word after it
    ("我老公于飞打呼噜。", ["于飞"]),
    ("主诉人：韶华（患者之女）", ["韶华"]),                       # any field named after who fills it
    ("参加人员：柯明、乔丽、訾伟", ["柯明", "乔丽", "訾伟"]),
    ("心理咨询师：蓟红", ["蓟红"]),
    ("由柏昶护士负责宣教。", ["柏昶"]),                           # 由 + surname + a rare given character
    ("请葛垚医生会诊。", ["葛垚"]),                               # + title
    ("手术记录：术者宦立华，助手钮丹，麻醉师扈宁。", ["宦立华", "钮丹", "扈宁"]),  # 麻醉师
])
def test_names_round3_surnames_roles_and_ordinary_words(text, names):
    assert _found(text, "name") == names, D.find(text)


@pytest.mark.parametrize("text", [
    "医生：平时注意饮食清淡。", "患者：明天去复查可以吗？", "医生：首先要规律作息。",  # dialogue turns, not fields
    "患者：怀孕14周了。", "医生：应该不是感冒。", "患者：母乳不够。",
    "我妈云南人，血压偏高。", "朋友从深山里带回蜂蜜。", "医生却告诉我不用担心。",      # weak/verbal surnames
    "患者平时自诉乏力。", "医生能告诉我吗？", "患者平静表示理解。",                  # no name before 自诉/诉/表示
    "让普通医生看看就行。", "找爱心护士咨询。", "交班给白班护士。",                  # words before titles
    "医生叫平躺，不要动。", "丈夫和女儿陪同就诊。", "患者门静脉高压。", "患者年轻女性，24岁。",
    "神经元变性、坏死。", "麻醉医师：", "其父母平均身高偏矮。", "采用辅助手段如药物治疗。",
    "治疗包括蒙脱石等药物。", "让爱美女士更满意。", "第五天了还在发烧。",
    "孩子叫了一晚上，没睡好。", "孩子叫平时不舒服。", "今日，主任医师查房。", "平时，医生说要多喝水。",
    "甲类包括：＠霍乱。", "由全麻组长负责麻醉。", "宝宝满月后再打疫苗。", "元月3日复查。", "谢谢全科医生的建议。",
    "医生：从描述看考虑腹泻。", "患者：能游泳吗？",   # a verbal surname (从, 能) after a speaker label
    "可用马应龙痔疮膏外用。", "病态窦房结综合征。",     # guard words found on unlabelled real text
    "患者家属常常陪同。", "患者家属平时陪同。",         # adverbs and time words in a person slot
    "患者：明白了，谢谢医生。", "家属：满意。",          # jieba tags 明白 nr; a one-word turn of a dialogue
    "患者常青藤过敏。", "我爸冷汗直冒。", "我妈言语不清两天了。",  # jieba tags 冷汗, 言语 nr
    "明天医生说要手术。", "年轻医生说不要紧。", "单位医生说是感冒。", "首诊医生建议住院。",  # no nouns, or
    "门诊医生说是胃炎。", "今天医生说没事。", "双方签字确认。", "术中医师行穿刺。", "海外医生建议手术。",  # guarded
    "患者（男，45岁）因胸痛入院。", "一助、二助均已到位。", "我和老公都是O型血。", "患者孙女陪同。",
    "签名：______  日期：2024-01-02", "录入员：系统自动录入。", "执行：已执行。", "麻醉方式：全麻/局麻",
    "由于医生建议，暂缓手术。", "患者平时因工作忙未复查。", "患者家属因故未到。", "患者海鲜过敏。",
    "护士常规记录生命体征。", "护士及时记录出入量。",
    "我妈于北京工作。", "我妈于昨晚发热。", "我妈于家中摔倒。", "同事却得了酒精肝。", "我爸从小就有哮喘。",
    "禁用者：孕妇及哺乳期妇女。", "操作者：常规消毒铺巾。", "执行人：已完成。", "生产者：华润制药。",
    "患者房颤于3天前发作。", "患者包皮因感染红肿。", "患者关节因劳累疼痛。",  # organs before 因/于: no names
    "患者房室于3天前出现传导阻滞。", "患者宫体因肌瘤增大。",                     # (nouns, not guarded)
    "由当班护士执行。", "由专职护士宣教。", "由双人护士核对。", "由首诊医师负责。", "由司机负责接送。",
    "患者谷丙转氨酶于3天前升高。", "患者雷击伤。", "患者乔迁后出现症状。",        # (false names before round 3)
])
def test_round3_rules_keep_ordinary_words(text):
    assert D.scrub(text)[0] == text, D.find(text)


# ---- round 4b: names in forms of address, heads of patient lines, departments and shift handovers ------
# (hand-made; each fails on the scrubber before round 4b, 34efefa; the contexts come from the name misses of
# held-out parts 6 and 7, the names and sentences do not)

@pytest.mark.parametrize("text,names", [
    ("护士长石磊巡视病房时发现输液外渗。", ["石磊"]),  # a long title anchors like a role word (长石 is a word across its end)
    ("入院第2天皇甫晓东主治医师查房。", ["皇甫晓东"]),  # a compound surname whose first character ends a word (天皇)
    ("交班者东方丽，接班者宋佳。", ["东方丽", "宋佳"]),  # who hands over / takes a shift (weak compound 东方)
    ("随访员麦文电话随访，患者无不适。", ["麦文"]),  # a role ending in 员
    ("陪同人韩国强称患者昨晚未进食。", ["韩国强"]),  # who accompanies the patient
    ("患者扎西顿珠，男，52岁，因胸痛入院。", ["扎西顿珠"]),  # a patient line's head, a name with no Han surname
    ("央金拉姆，女，40岁，藏族，因咳嗽就诊。", ["央金拉姆"]),  # the same at a line's start
    ("老孙说今晚他值班。", ["孙"]),  # 老/小 + surname as a form of address
    ("小谢，帮我把病历拿来。", ["谢"]),
    ("“小廖护士”很细心。", ["廖"]),
    ("小萱萱今天不发烧了。", ["萱萱"]),  # 小 + a doubled given-name character (a pet name)
    ("冯姐，3床的药换了吗？", ["冯"]),  # surname + 哥/姐 as a form of address
    ("已通知蒋医生。", ["蒋"]),  # a bare surname before a title after a verb of contacting
    ("已报告许主任，暂不处理。", ["许"]),
    ("下午韦护士来换药。", ["韦"]),  # ... after a time word
    ("骨科欧医生会诊后建议手术。", ["欧"]),  # ... after a department
    ("上周挂了时教授的专家号。", ["时"]),  # ... a weak surname too, when only a person has what follows (的号)
    ("请心内科应晓东医生会诊。", ["应晓东"]),  # a department on the left of a slot (weak surname 应)
    ("内分泌科柏涛、肾内科汤颖参加讨论。", ["柏涛", "汤颖"]),  # a department, then a name ending like a list item
    ("姓名：钟和顺\u3000性别：女", ["钟和顺"]),  # 和 starting a given name at a field end
    ("外婆伍和平，93岁，独居。", ["伍和平"]),  # ... at a clause end after kinship
    ("于建国医生说今天可以出院。", ["于建国"]),  # a weak surname at a line's start, before a title and a person verb
    ("他老婆丽娟明天过来陪护。", ["丽娟"]),  # a given name alone after kinship
    ("我叫子豪下课后去医院。", ["子豪"]),  # ... after 我叫 (told)
    ("“玉兰奶奶”又来复诊了。", ["玉兰"]),  # ... before an elder's form of address
    ("志强，你把化验单拿过来。", ["志强"]),  # a vocative at a line's start
])
def test_names_round4b_address_heads_departments_handovers(text, names):
    assert _found(text, "name") == names, D.find(text)


@pytest.mark.parametrize("text", [
    "老师，你好，我想问一下。", "乳腺小叶增生，建议复查。", "小米，红枣，山药煮粥。", "师姐，你帮我看看这个病人。", "小宝宝，别哭。", "小时候有哮喘病史。",
    "胃间质瘤，男，45岁，术后复查。", "高血压，女，60岁。", "患者，男，45岁，因胸痛入院。", "已通知值班医生。", "已报告上级医师。", "已通知管床医生。", "联系全科医生随访。",
    "今天上午主任查房。", "骨科医生会诊。", "外科主任查房后同意手术。", "骨科常规复查。", "内科治疗、外科手术均可。", "患者和家属同意手术。", "丈夫和女儿陪同。", "于是医生说可以出院。",
    "我和爱人过性生活时疼痛。", "我姐姐刚生完孩子。", "一种名叫水飞蓟宾的化合物。", "女儿小学三年级。", "宝宝，你乖。", "明天，你记得来。", "阿姨，您好。", "护士阿姨很耐心。",
    "空姐说飞机延误了。", "大蓟与小蓟，凉血止血。", "肺部感染，男，70岁，咳嗽3天。", "既往体健，女，50岁。", "医生：黄和白都可以。",
    "痰液：黄和白相间。", "挂了普通医生的号。", "挂了主任医师的号。",
])
def test_round4b_rules_keep_ordinary_words(text):
    """Words next to the new contexts: 老师, 小叶, 小米, 师姐, 值班医生, 上级医师, 骨科医生, 患者和家属, 过性生活,
    刚生完, 水飞蓟宾, 胃间质瘤，男 …"""
    assert D.scrub(text)[0] == text, D.find(text)


def test_surname_list_is_full_and_its_marks_are_consistent(tmp_path):
    from hypnos.data import deid_names as dn

    assert len(dn.SURNAMES) >= 500 and len(dn.COMPOUND) >= 70
    assert set("笪仉禚庹郇王李张") <= dn.SURNAMES and {"欧阳", "诸葛", "司马"} <= dn.COMPOUND
    assert dn.WEAK_SURNAMES <= dn.SURNAMES | dn.COMPOUND  # a weak mark on a non-surname does nothing
    assert dn.VERBAL_SURNAMES <= dn.WEAK_SURNAMES and not set("那有都经家") & dn.SURNAMES
    bad = tmp_path / "s.txt"
    bad.write_text("# header\n王李\n[single]\n张\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"s\.txt:2: surnames before any \[section\]"):
        dn._surname_sections(bad)


@pytest.mark.parametrize("text,hospital", [
    ("曾于复旦大学附属中山医院就诊", "复旦大学附属中山医院"), ("转至河南省人民医院", "河南省人民医院"),
    ("在新乡县古固寨镇卫生院输液", "新乡县古固寨镇卫生院"), ("在仁爱诊所就诊", "仁爱诊所"),
    ("到深圳市妇幼保健院咨询", "深圳市妇幼保健院"),
])
def test_hospitals_by_pattern_without_a_list(text, hospital):
    assert _found(text, "hospital") == [hospital]


def test_a_kinship_word_before_a_hospital_is_not_part_of_it():
    assert _found("我爸华西医院看过。", "hospital") == ["华西医院"]


def test_generic_hospital_words_stay():
    for text in ("去医院看看", "离县医院比较远", "请到当地医院就诊", "来我院就诊", "转回对方医院"):
        assert _found(text, "hospital") == [], text


@pytest.mark.parametrize("text,kind,value", [
    ("身份证号：110105194912310021", "id", "110105194912310021"),      # wrong check digit, labelled
    ("身份证：320102580607123（旧版）", "id", "320102580607123"),        # 15-digit old format
    ("病历号：ZY-2024-01234", "record", "ZY-2024-01234"),
    ("就诊卡号：6228 4801 2233 7791。", "record", "6228 4801 2233 7791"),
    ("医保卡号：H41018800234567，", "record", "H41018800234567"),
    ("座机：64041990，", "phone", "64041990"),                            # landline without area code
    ("手机 +86 186 0371 2299", "phone", "+86 186 0371 2299"),
    ("出生年月：1958年7月，", "dob", "1958年7月"),
    ("邮箱 liuhua1962@163.com。", "email", "liuhua1962@163.com"),
])
def test_numbers_dates_and_emails(text, kind, value):
    assert _found(text, kind) == [value], D.find(text)


def test_unlabelled_18_digit_needs_checksum_and_birth_date():
    assert valid_resident_id("11010519491231002X") and not valid_resident_id("110105194912310021")
    assert _found("证件信息：440306197808221534", "id") == ["440306197808221534"]
    # passes the checksum, but 1509-12-34 is no birth date: an order number, kept
    assert valid_resident_id("202403150912345671")
    assert _found("订单号202403150912345671", "id") == []
    # of 11k random 18-digit numbers about 1/11 pass the checksum; almost none also carry a real date
    rng = random.Random(0)
    nums = ["".join(rng.choice("0123456789") for _ in range(18)) for _ in range(11000)]
    assert sum(valid_resident_id(n) for n in nums) > 800
    assert sum(bool(_found(f"单号{n}。", "id")) for n in nums) < 20


def test_ages_over_89_only_when_configured():
    text = "患者系93岁高龄女性，其子65岁。"
    assert _found(text, "age") == []
    aged = Deidentifier(ages_over_89=True)
    assert [text[s.start : s.end] for s in aged.find(text) if s.type == "age"] == ["93岁"]


# ---- the independent set --------------------------------------------------------------------------

def test_evaluation_set_is_large_labelled_and_consistent():
    from hypnos.data.deid_eval import load_parts

    parts = load_parts(SEEN_PARTS)
    allx = [e for p in parts.values() for e in p]
    assert len(allx) >= 300 and sum(not e.spans for e in allx) >= 40
    assert len(parts["dev"]) / len(allx) <= 2 / 3  # at least a third is held out
    assert {e.genre for e in allx} >= {"admission", "anesthesia", "consent", "discharge", "question", "answer"}
    for e in allx:
        for g in e.spans:
            assert e.text[g.start : g.end] == g.text, e.where
        assert "{" not in e.text and "}" not in e.text, e.where


def test_scorer_oracle_and_hand_computed_case():
    from hypnos.data.deid_eval import Example, GoldSpan, load_parts, score

    ex = load_parts(["dev"])["dev"]
    perfect = score(lambda t: next(e.spans for e in ex if e.text == t), ex)
    assert all(s["precision_exact"] == s["recall_exact"] == 1.0 for s in perfect.values())
    assert score(lambda t: [], ex)["all"]["recall_overlap"] == 0.0
    # 患者张三住在X: gold name [2,4); predictions: name [2,3) (overlap, not exact) and a false name [5,6)
    case = [Example("患者张三住在X", [GoldSpan(2, 4, "name", "张三")], "t", "t:1")]
    s = score(lambda t: [GoldSpan(2, 3, "name", "张"), GoldSpan(5, 6, "name", "在")], case)["name"]
    assert (s["recall_overlap"], s["recall_exact"], s["precision_overlap"], s["precision_exact"]) == (1.0, 0.0, 0.5, 0.0)


# The parts already seen (each after its first look): a blind part added later is scored by hand once,
# never by this regression test.
SEEN_PARTS = ("dev", "heldout", "heldout2", "heldout3", "heldout4", "heldout5", "heldout6", "heldout7", "heldout8",
              "heldout9", "heldout10", "heldout11", "heldout12", "heldout13", "heldout14", "heldout15",
              "heldout16")
# Name bars below 0.99 where a seen part still has misses after its round (the regression figure minus a small
# margin): part 6 105/109 = 0.963 after round 4b (first look 0.761), part 7 101/102 = 0.990 (first look 0.814).
# Part 8 (first look 113/130 = 0.869, records 7/9) is seen since round 5: 130/130, records 9/9.
# Part 9 (first look 102/122 = 0.836, 4 false names; IDs 6/7, address 4/5, age 9/10) is seen since round 6: 122/122.
# Part 10 (realistic mix; first look on round 6: names 112/117 = 0.957, hospitals 10/12, phones 6/7, precision
# 1.000) is seen since: its hospital and phone misses were fixed as families; its 5 name misses were not.
# Part 11 (realistic mix; first look after the part-10 fixes: names 113/119 = 0.9496, records 8/9, all else 1.000)
# is seen since: its record miss (居民健康档案编号) was fixed as a family; its 6 name misses were not.
# Part 12 (realistic, settings outside hospitals; first look after the bed-number rule: names 96/114 = 0.842,
# records 12/19, hospitals 9/10, phones 10/11 + 1 false, 1 false address) is seen since: number labels with a colon,
# care homes and service numbers were fixed as families; its names and two records (献血码 without a colon, a
# 13-character label) were not.
# (round 7) every seen part now reaches the default bars: names 0.99 (part 7 101/102, part 10 117/117, part 11 119/119,
# part 12 113/114; they stood at 0.98, 0.95, 0.94, 0.84), part 12's records 19/19 (was 0.89) and its precision 1.000 (was 0.98)
# Part 13 (hospital documents; first look on round 7: names 100/116 = 0.862, hospitals 20/22, address 8/9, one false name
# 勾选 in a PII-free sentence, precision 0.989) and part 14 (patient-side text; first look: names 84/96 = 0.875, hospitals
# 22/24, records 18/22, IDs 5/6, precision 0.994) are seen since round 8: names 115/116 and 95/96 after it (方圆 and
# 甘露 left), every other type at its bar, precision 1.000 on both.
# Part 15 (hospital documents incl. minority regions; first look on round 8: names 87/103 = 0.845 — Uyghur, Tibetan,
# Mongolian and Yi names, ordinary-word names —, hospitals 13/14, precision 1.000) and part 16 (patient-side text;
# first look: names 75/80 = 0.938 with 5 false names, hospitals 18/22, addresses 12/15 (…街道), records 19/21,
# precision 0.965, 2 PII-free sentences changed) are seen since, unfixed: their bars are their first looks.
NAME_BARS: dict[str, float] = {"heldout14": 0.989, "heldout15": 0.84, "heldout16": 0.93}
OTHER_BARS: dict[tuple[str, str], float] = {("heldout15", "hospital"): 0.92, ("heldout16", "hospital"): 0.81,
                                            ("heldout16", "address"): 0.79, ("heldout16", "record"): 0.90}
PRECISION_BARS: dict[str, float] = {"heldout16": 0.96}  # part 6 is at 109/109 since round 5 (秀芝 ×2 and 刘一诺 as families), on the default bar


def test_meets_the_bar_on_every_part_and_keeps_clean_sentences():
    """A regression guard (the honest first-look figures are in docs/deidentify.md): the bar of issue 13
    on every seen part. Names: 1.000 on dev and parts 1-5 (part 5: 44/68 = 0.647 on its first look and
    before the round-3 rules, which were tuned on its misses), ``NAME_BARS`` on parts 6-7; precision 1.000
    everywhere."""
    from hypnos.data.deid_eval import load_parts, score

    deid = Deidentifier(ages_over_89=True)
    for part, ex in load_parts(SEEN_PARTS).items():
        st = score(deid.find, ex)
        for kind in ("id", "phone", "record"):
            bar = OTHER_BARS.get((part, kind), 0.99)
            assert st.get(kind, {}).get("recall_overlap", 1.0) >= bar, (part, kind, st.get(kind))
        for kind in ("name", "hospital", "address", "dob"):
            bar = NAME_BARS.get(part, 0.99) if kind == "name" else OTHER_BARS.get((part, kind), 0.95)
            assert st.get(kind, {}).get("recall_overlap", 1.0) >= bar, (part, kind, st.get(kind))
        assert st["all"]["precision_overlap"] >= PRECISION_BARS.get(part, 0.99), (part, st["all"])
        changed = [e.where for e in ex if not e.spans and deid.scrub(e.text)[0] != e.text]
        assert len(changed) <= 0.05 * sum(not e.spans for e in ex), changed


def test_template_cases_stay_consistent():
    """The template generator only checks the scrubber still reads its own templates (no quality claim)."""
    stats = evaluate(Deidentifier(SYNTH_HOSPITALS), synthetic_cases(300, seed=1))
    assert set(stats) == {"name", "id", "phone", "record", "address", "dob", "hospital", "all"}
    for kind, s in stats.items():
        assert s["recall"] >= 0.9 and s["precision"] >= 0.9, (kind, s)


# ---- the stage --------------------------------------------------------------------------------------

ROWS = [
    {"id": "a", "instruction": "患者李某，电话13912345678，术前应注意什么？", "output": "联系王医生。",
     "category": "外科", "meta": {"doctor": "主刀医师：陈志刚", "hospital": "河南省人民医院"}},
    {"id": "b", "conversations": [{"from": "human", "value": "我叫张伟，住院号：123456"},
                                  {"from": "gpt", "value": "您好，请把邮箱 zw@qq.com 发我"}]},
    {"id": "c", "question": "患者身份证号110105194912310021，下列哪项正确？", "options": {"A": "联系人：赵敏", "B": "高热"},
     "answer": "A", "answers": ["家属签字：王秀英"]},
    {"id": "d", "text": "张某于青禾市第一人民医院就诊", "entities": []},
]
SECRETS = ["13912345678", "陈志刚", "河南省人民医院", "张伟", "123456", "zw@qq.com", "110105194912310021", "赵敏",
           "王秀英", "青禾市"]


def _recipe(tmp_path, extra: str = "") -> Path:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS))
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
        name: p
        stages:
          - {{name: deidentify, input: in.jsonl{extra}}}
        """))
    return tmp_path / "r.yaml"


def _all_text(folder: Path) -> str:
    return "".join(p.read_text("utf-8", errors="replace") for p in folder.rglob("*") if p.is_file())


def test_stage_scrubs_every_text_field_counts_and_writes_no_original(tmp_path):
    [m] = run_recipe(load_recipe(_recipe(tmp_path), output_dir=tmp_path / "runs"))
    out = [json.loads(x) for x in (tmp_path / "runs/p/deidentify/scrubbed.jsonl").read_text().splitlines()]
    assert out[0]["instruction"] == "患者[姓名]，电话[电话]，术前应注意什么？" and out[0]["output"] == "联系[姓名]医生。"
    assert out[0]["meta"] == {"doctor": "主刀医师：[姓名]", "hospital": "[医院]"} and out[0]["category"] == "外科"
    assert out[1]["conversations"][0] == {"from": "human", "value": "我叫[姓名]，住院号：[住院号]"}
    assert out[1]["conversations"][1]["value"] == "您好，请把邮箱 [邮箱] 发我"
    assert out[2]["options"] == {"A": "联系人：[姓名]", "B": "高热"} and out[2]["answers"] == ["家属签字：[姓名]"]
    assert out[2]["question"].startswith("患者身份证号[身份证号]") and out[2]["answer"] == "A"
    # the dropped NER row (张某, 青禾市第一人民医院) counts too: it was scrubbed before being set aside
    assert m["metrics"]["replaced"] == {"[姓名]": 7, "[电话]": 1, "[住院号]": 1, "[医院]": 2, "[邮箱]": 1,
                                        "[身份证号]": 1}
    assert m["counts"]["dropped"] == 1  # the NER row's spans no longer fit its text
    leaked = [s for s in SECRETS if s in _all_text(tmp_path / "runs")]
    assert leaked == []
    assert not list((tmp_path / "runs").rglob("*mapping*"))  # reversible mode is off by default


def test_reversible_mode_writes_a_private_mapping_that_restores_the_text(tmp_path):
    mapping = tmp_path / "private" / "map.jsonl"
    [m] = run_recipe(load_recipe(_recipe(tmp_path, f", reversible: true, mapping_file: {mapping}"),
                                 output_dir=tmp_path / "runs"))
    assert stat.S_IMODE(os.stat(mapping).st_mode) == 0o600
    pairs = [json.loads(x) for x in mapping.read_text().splitlines()]
    assert len({p["placeholder"] for p in pairs}) == len(pairs) == sum(m["metrics"]["replaced"].values())
    out = [json.loads(x) for x in (tmp_path / "runs/p/deidentify/scrubbed.jsonl").read_text().splitlines()]
    restored = out[0]["instruction"]
    for p in pairs:
        restored = restored.replace(p["placeholder"], p["original"])
    assert restored == ROWS[0]["instruction"]
    assert [s for s in SECRETS if s in _all_text(tmp_path / "runs")] == []


def test_reversible_mode_needs_a_mapping_file_outside_the_run(tmp_path):
    with pytest.raises(Exception, match="mapping_file"):
        load_recipe(_recipe(tmp_path, ", reversible: true"), output_dir=tmp_path / "runs")
    inside = tmp_path / "runs" / "p" / "map.jsonl"
    with pytest.raises(Exception, match="outside the run directory"):
        run_recipe(load_recipe(_recipe(tmp_path, f", reversible: true, mapping_file: {inside}"),
                               output_dir=tmp_path / "runs"))


def test_two_processes_write_outputs_and_mapping_once(tmp_path):
    mapping = tmp_path / "map.jsonl"
    recipe = _recipe(tmp_path, f", reversible: true, mapping_file: {mapping}")
    env = {**os.environ, "HYPNOS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
                           "-m", "hypnos.cli", "run", str(recipe), "--output-dir", str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True, check=False, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (tmp_path / "runs/p/deidentify/scrubbed.jsonl").read_text().splitlines()
    assert len(rows) == 3
    m = json.loads((tmp_path / "runs/p/deidentify/manifest.json").read_text())
    assert len(mapping.read_text().splitlines()) == sum(m["metrics"]["replaced"].values())


def test_deid_eval_cli_prints_both_parts():
    from hypnos.data.cli import app

    res = CliRunner().invoke(app, ["deid-eval", "--part", "dev", "--part", "heldout4"])  # seen parts only
    assert res.exit_code == 0, res.output
    for word in ("dev", "heldout", "heldout4", "姓名", "身份证号", "exact", "overlap"):
        assert word in res.output


def test_a_bad_label_in_a_set_file_names_file_and_line(tmp_path):
    from hypnos.common.io import DataError
    from hypnos.data.deid_eval import load_set

    f = tmp_path / "s.txt"
    f.write_text("# header\n患者{name:张三}\n患者{nmae:李四}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.txt:3: unknown PII type 'nmae'"):
        load_set(f)
    f.write_text("患者{name:张三\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.txt:1: unbalanced"):
        load_set(f)
