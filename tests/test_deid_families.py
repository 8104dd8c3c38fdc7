"""Round 5 of the name finder (deid_families, and the list/kinship/record rules it came with): each family
with names and contexts written for these tests (not part 8's), each case missed by the scrubber before
the round; and ordinary clinical sentences next to the same contexts that must stay intact."""

import pytest

from hypnos.data.deidentify import Deidentifier

D = Deidentifier()


def _names(text: str) -> list[str]:
    return [text[s.start : s.end] for s in D.find(text) if s.type == "name"]


# every case below fails on the scrubber before round 5 (checked against commit e4ed5a1)
@pytest.mark.parametrize("text,names", [
    # a bare surname before a title or an elder's form of address, after any role, bed or verb
    ("按冯主任的意见，明日复查血常规。", ["冯"]),
    ("遵照谭教授医嘱继续抗感染治疗。", ["谭"]),
    ("8床邵大爷夜间咳嗽加重。", ["邵"]),
    ("隔壁床的甘奶奶下午转科了。", ["甘"]),
    ("请示二线医生龚医生后加用甲强龙。", ["龚"]),
    ("12床韩大妈夜间睡眠差。", ["韩"]),
    # 老/小 + a surname wherever 老/小 ends no word
    ("6床老鲍今晚禁食。", ["鲍"]),
    ("是小褚，替我跟家属说一声。", ["褚"]),
    ("刚才小闫来拿过化验单。", ["闫"]),
    # signature rows: ordinary words and given names are names there
    ("处方医师：叶舟　审核：石磊　调配：海燕　核对：春华　发药：林森", ["叶舟", "石磊", "海燕", "春华", "林森"]),
    ("医师顾城审核阮玲调配冷月核对戴望舒发药邹凡", ["顾城", "阮玲", "冷月", "戴望舒", "邹凡"]),
    ("采样者谷雨 送检者梅林", ["谷雨", "梅林"]),
    ("检验者严冬 审核者冷月", ["严冬", "冷月"]),
    # children's pet names and nicknames
    ("我外孙女果果今年六岁，一直流鼻涕。", ["果果"]),
    ("我家孩子糖糖两岁半，晚上总咳嗽。", ["糖糖"]),
    ("外孙女叫多多，刚满两岁，拉肚子。", ["多多"]),
    ("孙子壮壮刚满周岁，拉肚子三天。", ["壮壮"]),
    ("儿子叫天天，今年4岁，发烧。", ["天天"]),
    ("宝宝菲菲十个月大，出牙发烧正常吗？", ["菲菲"]),
    ("小名叫团团，体重偏轻。", ["团团"]),
    ("乳名：安安，足月顺产。", ["安安"]),
    ("我闺女小萱昨晚吐了两次。", ["小萱"]),
    # given names alone in ward talk: vocatives, nurses, lists
    ("婷婷你去看一下12床的输液。", ["婷婷"]),
    ("收到，娜娜你把交班本拿过来。", ["娜娜"]),
    ("丽丽，帮我把血压计拿来。", ["丽丽"]),
    ("值班护士秀梅已测血糖。", ["秀梅"]),
    ("护士小雨、晓燕和秀梅轮流值班。", ["小雨", "晓燕", "秀梅"]),
    ("护士秀兰、春梅负责夜班。", ["秀兰", "春梅"]),
    ("陪护：女儿玉珍、桂香、秀琴轮流陪护。", ["玉珍", "桂香", "秀琴"]),
    ("护士美玲、淑华和秀芝轮流值班。", ["美玲", "淑华", "秀芝"]),
    ("我家闺女小敏、思雨都咳嗽。", ["小敏", "思雨"]),
    ("我老伴淑珍最近老忘事。", ["淑珍"]),
    # names before 姐/哥 used as address
    ("小芳姐，3床家属在找你。", ["小芳"]),
    ("芳芳姐，12床的家属找你。", ["芳芳"]),
    # strong compound surnames in any context
    ("今天司徒静值夜班。", ["司徒静"]),
    ("今天端木蓉值夜班。", ["端木蓉"]),
    ("术后第2天上官晓琳下床活动。", ["上官晓琳"]),
    # a role and a speech verb around an ordinary-word name
    ("家属花蕾说患者夜里没睡好。", ["花蕾"]),
])
def test_round5_name_families(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text,names", [
    # a given name alone that the recogniser vouches for (two common given-name characters, no word)
    ("护士长，思琪今天请假了，夜班谁顶？", ["思琪"]),
    ("明轩妈妈，孩子今天体温正常了。", ["明轩"]),
    ("欣怡爸爸请到护士站签字。", ["欣怡"]),
    ("我姑娘婉婷在外地上学，能不能视频问诊？", ["婉婷"]),
    ("表妹丽娟也有同样的症状。", ["丽娟"]),
    # after more kinship words; given names of the 1950s-70s that are words, right after a kinship word
    ("我跟我对象志强商量一下再决定。", ["志强"]),
    ("我大儿子建国在国外，二儿子建军在家照顾。", ["建国", "建军"]),
    # a surname + 姐 as address, 老 + surname before a parenthesis
    ("同病房的王姐人很好。", ["王"]),
    ("家属：老马（患者之子），已知情同意。", ["马"]),
    # operation roles listed like signatures; a weak surname there is a name too
    ("巡回护士满月，器械护士白露。", ["满月", "白露"]),
    # a surname said with 姓, a family called by its surname, a weak surname thanked with its title
    ("我婆婆姓笪，今年78岁，最近总说胸闷。", ["笪"]),
    ("主任，刚才覃家的人来问了。", ["覃"]),
    ("感谢冷医生的耐心解释！", ["冷"]),
    # 阿 + a given-name character; a chat mention of a given name
    ("我妈妈叫阿兰，今年六十了。", ["阿兰"]),
    ("阿珍说她不想住院。", ["阿珍"]),
    ("@蓓蓓 明天你早班。", ["蓓蓓"]),
    # roles ending in 医师/医生 listed with separators: a row of names, ordinary words included
    ("麻醉医师高峰，手术医师江河。", ["高峰", "江河"]),
    ("经治医生夏雨，上级医师秦川。", ["夏雨", "秦川"]),
    # surname + 一 + a given-name character; a given name opening a quotation, and again later in the text
    ("我家宝宝王一鸣才10个月，发烧了。", ["王一鸣"]),
    ("孙一航今天复查。", ["孙一航"]),
    ("老人念叨“建华呢，建华怎么还不来”。", ["建华", "建华"]),
    ("“桂兰啊，你在哪”", ["桂兰"]),
    ("孩子叫梓涵，梓涵尼克是他的英文名。", ["梓涵"]),  # (not where it heads a transliteration)
    # pet names: soothing a child, two doubled names joined
    ("“妞妞不哭，阿姨轻轻的。”", ["妞妞"]),
    ("今天牛牛和毛毛都来复诊了。", ["牛牛", "毛毛"]),
])
def test_round5_given_names_kin_and_roles(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text,names", [
    # rare surnames of the longer 百家姓 editions and regional registers (added to deid_surnames.txt)
    ("昨晚贠建民在病房摔倒。", ["贠建民"]),
    ("我爸眭福林最近老咳嗽。", ["眭福林"]),
    ("綦海涛主任查房后同意出院。", ["綦海涛"]),
    ("麻醉医师：仵德明", ["仵德明"]),
    ("禤志刚医生已查看患者。", ["禤志刚"]),
])
def test_rare_surnames(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text,value", [
    ("标本号：B2024-0567，已送检。", "B2024-0567"),
    ("影像号：CT20240311-22", "CT20240311-22"),
    ("病理编号：BL-2023-4412", "BL-2023-4412"),
    ("检验单号 X20240312007", "X20240312007"),
    ("患者ID：A0012345", "A0012345"),
])
def test_record_numbers_after_any_filing_label(text, value):
    assert [text[s.start : s.end] for s in D.find(text) if s.type == "record"] == [value]


@pytest.mark.parametrize("text", [
    # titles and elder words after words that end in a surname character
    "班主任老师说孩子上课注意力不集中。", "他是我们的语文老师。", "邻居大爷帮忙叫了救护车。", "值班医生已看过患者。",
    "夜班护士测量体温37.5℃。", "实习医生协助换药。", "5楼医生办公室在走廊尽头。", "外科楼5楼，护士站旁边。",
    "乙肝小三阳转氨酶高医生建议服药。", "护士阿姨很耐心。", "请与当地医生联系。", "主任医师查房后同意出院。",
    # 老/小 in words
    "我从小就有鼻炎。", "孩子小时候得过肺炎。", "最近用的小钱包丢了。", "老毛病又犯了，胃疼。", "家里养老的钱都花在看病上了。",
    "小便时有灼热感。", "小柴胡颗粒每次一袋。", "老年患者要注意防跌倒。", "小白鼠实验显示有效。", "缩小病灶后再手术。",
    "他的小叔子也有高血压。", "心室壁的肌小梁形态正常。", "可见小梁网炎和白内障。", "伏格特-小柳-原田综合征的症状。",
    "检查发现患上了伏格特-小柳-原田综合征，该如何治疗？", "虹膜新生血管等伏格特-小柳-原田综合征的症状。",
    # doubled characters that are words
    "天天吃药也不见好。", "常常头晕，慢慢加重。", "宝宝今天吐奶了。", "妈妈说孩子昨晚发烧。", "哈哈哈，谢谢医生。",
    "宝宝乐乐地笑了。", "孩子天天哭闹不止。", "明明吃了药还发烧。", "长小痘痘，痒痒，是怎么了。", "汪汪！小狗叫个不停。",
    "小名是爸爸取的。", "孩子叫我们带他来复查。", "他被昵称为“传奇”。",
    # words after child and kinship words; rows of roles that are no signatures
    "导致宝宝过敏的食物要避免。", "宝宝过敏，怎么办？", "孩子发烧、咳嗽三天。", "宝宝湿疹、腹泻。", "患儿由外婆、奶奶陪同。",
    "她老公输精管堵塞。", "微生物培养阴性。", "长孙女陪同就诊。", "审核：通过　核对：无误",
    "医师建议患者低盐饮食，审核结果未见异常。", "检验结果：白细胞升高，报告时间：上午10点。",
    # speech verbs after a person word
    "家属说患者平时很少喝水。", "医生严肃地说需要手术。",
    # the recogniser's given names: eponyms, wavelets; 师姐, 大嫂 are words
    "信号可以分解成称为小波的较小部分。", "师姐，你帮我看看这个病人。", "大嫂说患者昨晚没睡。", "主刀顺利，一助良好。",
    # verdicts in rows of roles, nouns after 小, words that end in 老/小, questions after 外号
    "老百姓看病难。", "您贵姓？", "他姓什么？", "随母姓，", "国家医保局。", "专家门诊。", "农家人的饮食习惯比较清淡。", "万家灯火。", "谢谢向医生。",
    "请问查医生，这个药还要吃多久？", "送检：金华市。", "医生：多喝水，护士：按时吃药。", "药师：暂无。下次审核：周一", "药师：暂无。送检：金华市", "需要寻求专业医生和心理医生的帮助。",
    "每周一次，连续三周。", "高一学生，近期头痛。", "万一发烧怎么办？", "王一天三次。", "陈一周后复查。", "周一明确诊断。",
    "“妈妈呢，妈妈在哪”", "“钥匙呢？”", "“报告呢，你拿了吗”", "“上海呢，你去过吗”", "“宝宝呢，宝宝去哪了”",
    "患者经过索拉非尼治疗后，对索拉非尼敏感。", "“明天呢，你有空吗”", "我同学小时候得过肺炎。",
    # role words in regulations: no row (each value runs on or stands alone)
    "进行审方和调剂。处方的调配人、核对人应当拒绝发药。", "包括标准复核和样品检验。新药上市应当进行样品检验和标准复核。",
    "我爸爸在阿里巴巴上班。", "名叫阿联酋航空的公司。", "我妈妈阿胶吃了一年。", "叫阿姨过来。", "阿司匹林每天一片。",
    "妈妈、阿婆都来了。", "@所有人 明天开会", "@全体成员 注意查收", "@管理员 请审核。", "@全体 请注意", "@宝宝 今天怎么样", "@帅哥 在吗", "＠危重型：在重型基础上出现休克。", "检验：阴性　复核：阴性", "结果：阴性　报告：已发", "审核：合格　签收：已签收", "资料：齐全　审核：双签",
    "加上过路费和小费（总计约65美元）。", "养老金不够看病。", "他的外号是什么？", "患乙肝小三阳转氨酶高医生建议服药，结果反弹。",
    # numbers after labels that file no person
    "批号：H20240101，有效期至2026年。", "床号：12，血压正常。",
])
def test_round5_rules_keep_ordinary_words(text):
    assert D.scrub(text)[0] == text, D.find(text)


# ---- round 6 (part 9's misses as families; every case below is missed before the round, checked against e080653,
# but the two marked as guards)

R6_NAMES = [
    # duty rosters and schedules: a chain of weekday/shift labels, each with a short value, is a row of names
    ("排班：周一冷锋、周二柏松、周三司徒静", ["冷锋", "柏松", "司徒静"]),
    ("本周值班：星期六乔木，星期日白露", ["乔木", "白露"]),
    ("值班：周六方圆、周日文静", ["方圆", "文静"]),  # (both common nouns: the roster word says "people")
    ("白班：秋实　夜班：江涛", ["秋实", "江涛"]),
    # attendee lists and who keeps the minutes
    ("出席人员：江海 白云 常青 敖光明", ["江海", "白云", "常青", "敖光明"]),
    ("病例讨论记录整理：方正", ["方正"]),
    ("主持：文静", ["文静"]),
    # names before a role or kin relation in parentheses, and role + name items of the same list
    ("手术签名：江山（主刀）、海洋（一助）、器械护士春雨", ["江山", "海洋", "春雨"]),
    ("家属揭晓梅（患者之女）、揭晓东（患者之子）已到场。", ["揭晓梅", "揭晓东"]),
    # a person word, then a name that is an ordinary word, before what a person does or a list
    ("见习同学秋月记录病程。", ["秋月"]),
    ("其子平安表示同意手术。", ["平安"]),
    ("规培医生常青、白雪，负责夜间观察。", ["常青", "白雪"]),
    ("出席：冷锋、米兰", ["冷锋", "米兰"]),
    ("今天由夏至（规培）管床", ["夏至"]),
    ("你姨夫国华也来了", ["国华"]),
    ("他二舅国平上个月走了", ["国平"]),
    # a weekday after a roster item is no name (周 is a surname); a screen name is no name to cut
    ("值班表：周三邝伟、周四", ["邝伟"]),
    ("发帖人：云卷云舒2018　我是白露，最近总头疼。", ["白露"]),
    ("发帖人：林深见鹿1998　我叫周洁", ["周洁"]),
    # compound surnames before a title at a line's start or after a verb, not across a word (公司|马医生)
    ("公司马医生说", ["马"]),
    ("赵大妈（女）68岁，咳嗽。", ["赵"]),  # (a guard: a sex in parentheses is no relation: met on the unlabelled set)  # (the one case here found before the round too: it guards the compound rule's word check)
    ("上官主任今天不出诊。", ["上官"]),
    ("听说诸葛医生明天出差。", ["诸葛"]),
    # given names before 哥/姐 with what they did
    ("多亏志鹏哥替我值了夜班。", ["志鹏"]),
    # spoken kin + given name, 老X家的 + given name
    ("他说：“你姑桂英也是这个病。”", ["桂英"]),
    ("我舅卫东说过", ["卫东"]),
    ("老三家的桂香前天住院了。", ["桂香"]),
    # pet names: in quotes after 小名, at a clause's start before a parent or time word
    ("患儿小名“贝贝”，4岁。", ["贝贝"]),
    ("果果妈妈问：要不要复查血常规？", ["果果"]),
    ("患者的女儿丹丹说晚上来。", ["丹丹"]),  # (jieba calls 丹丹 a place)
    ("儿科门诊复诊：闹闹今天精神好，热退。", ["闹闹"]),
]


@pytest.mark.parametrize("text,names", R6_NAMES)
def test_round6_name_families(text, names):
    assert _names(text) == names


D89 = Deidentifier(ages_over_89=True)


@pytest.mark.parametrize("text,kind,value", [
    ("身份证号（旧）：320106480213041", "id", "320106480213041"),
    ("证件号码(护照)：E87654321", "id", "E87654321"),
    ("护照号：G12345678", "id", "G12345678"),
    ("外婆今年九十二岁，耳背。", "age", "九十二岁"),
    ("老寿星一百零一岁生日。", "age", "一百零一岁"),
    ("她爷爷九十多岁了。", "age", "九十多岁"),
    ("他们一家从彝良县洛泽河镇大河村搬来。", "address", "彝良县洛泽河镇大河村"),
    ("回到老家平利县城关镇养病。", "address", "平利县城关镇"),
    ("老家是巧家县药山镇。", "address", "巧家县药山镇"),
    ("他在宣威市板桥镇打工。", "address", "宣威市板桥镇"),
    ("身份证号（二代）：410105570312081", "id", "410105570312081"),
])
def test_round6_ids_ages_addresses(text, kind, value):
    assert [text[s.start : s.end] for s in D89.find(text) if s.type == kind] == [value]


@pytest.mark.parametrize("text", [
    # weekdays, shifts and schedules without people
    "每周二、周四上午门诊，周五下午手术。",
    "周一复查、周二出院。",
    "白班：正常　夜班：休息",
    "值班表：周一至周五，每天八点交班。",
    "早班：牛奶 晚班：米粥",  # (a checklist of nouns, no roster word, no plain name: no people)
    "早班：毛毯 晚班：棉被",
    # screen names are no names to cut
    "楼主：海阔天空88　请问胃镜前要空腹多久？",
    "发帖人：夏日微风2020 最近总是胃疼。",
    # list labels followed by no names
    "参加人员：全体医护人员",
    "主持：科室主任",
    "整理：待定",
    # words before parentheses that are no roles
    "诊断：肺炎（待排）、胃炎（慢性）",
    "家属表示同意（签字）。",
    # person words before ordinary words that are no names
    "同学们说复习很辛苦。",
    "其女儿表示理解。",
    # compound surname characters before a title inside words
    "远东方医生很多？",
    # kin and 家的 without a given name
    "老二家的孩子发烧了。",
    "我姨说不用去医院。",
    # doubled characters at a clause's start that are words
    "渐渐今天好多了。",
    "刚刚已经吃过药了。",
    # ages and places that are no PII
    "二十九岁，男。",
    "九十年代开始吸烟。",
    "我们县乡两级医院都去过。",
    "全省每个县两个镇试点。",
    "其子宫内膜增厚。",
    "他姑北京人。",
    "我大姨妈来了。",
    "由主任（主刀）完成。",
    "我叔叔得糖尿病了一年多。",  # (met on the unlabelled set)
    "在全县乡镇推广。",
    "在大城市乡镇都推广了。",
    "本市城关镇。",
    "在杭州市区的小镇上住过。",
    "身份证（复印件）已收。",
])
def test_round6_rules_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text


# (session 4, after part 10's first look) hospitals whose name holds a word jieba tags as a verb or numeral, and
# landlines a few words after their label; each case fails before this change
@pytest.mark.parametrize("text,kind,value", [
    ("上月转到南昌市市立医院复查。", "hospital", "南昌市市立医院"),
    ("他在湘雅三医院做的手术。", "hospital", "湘雅三医院"),
    ("我是中山大学孙逸仙纪念医院的，不是中山一医院。", "hospital", "中山一医院"),
    ("护士站电话换了，新号码是67281934，请转告。", "phone", "67281934"),
    ("座机已经改成 5523 8871 了", "phone", "5523 8871"),
])
def test_hospitals_with_tagged_words_and_landlines_after_a_clause(text, kind, value):
    assert value in [text[s.start : s.end] for s in D89.find(text) if s.type == kind]


@pytest.mark.parametrize("text", [
    "电话随访日期20240503，患者恢复可。",
    "电话已登记，住院号20563311。",  # the number after 住院号 is a record, not a phone
    "电话已留，床号3526。",
    "电话沟通后患者同意，于20240611手术。",
    "到正规医院看看，别去一家小诊所。",
    "在省立医院和市立医院都看过。",
    "他们找了三家医院。",
])
def test_hospital_and_landline_rules_keep_ordinary_sentences(text):
    spans = [(s.type, text[s.start : s.end]) for s in D89.find(text)]
    assert all(k not in ("phone", "hospital") for k, _ in spans), spans


# (session 4, after part 11's first look) the *编号 forms of filing labels; 住院 is no address label
@pytest.mark.parametrize("text,value", [
    ("居民健康档案编号：330105-1102-00457", "330105-1102-00457"),
    ("病历编号 BL20231187", "BL20231187"),
    ("住院编号：2023-09912", "2023-09912"),
])
def test_numbered_filing_labels(text, value):
    spans = [(s.type, text[s.start : s.end]) for s in D89.find(text)]
    assert spans == [("record", value)], spans


@pytest.mark.parametrize("text", ["档案管理规范，住院期间常规护理。", "门诊就诊3次，病历书写规范。", "住院部在3楼。"])
def test_filing_words_without_a_value_stay(text):
    assert D89.scrub(text)[0] == text


# (session 4, after part 11's first look) a name after a bed number, ending its clause
@pytest.mark.parametrize("text,names", [
    ("6床庹春明，COPD急性加重，夜间喘憋。", ["庹春明"]),
    ("31床新入院符晓梅，孕32周先兆早产。", ["符晓梅"]),
    ("4床患儿靳一诺，男，2岁。", ["靳一诺"]),
    ("11床鞠振华、12床芦桂兰今日出院。", ["鞠振华", "芦桂兰"]),
    ("交班：27床尉建设", ["尉建设"]),
])
def test_name_after_a_bed_number(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["5床白细胞计数低，予升白治疗。", "12床高热不退。", "8床黄疸今日加重。", "22床常规护理。",
                                  "7床周末出院。", "3床床旁超声。", "9床方可下床活动。", "9床于今日出院。", "4床何时手术？",
                                  "15床石膏固定良好。", "21床林格液500ml静滴。", "6床患者血压偏低。"])
def test_clinical_words_after_a_bed_number_stay(text):
    assert D89.scrub(text)[0] == text


# (session 4, after part 12's first look) a value after any field label that names a number, with a colon
@pytest.mark.parametrize("text,value", [
    ("借阅证号：TS2019004417，读者已登记。", "TS2019004417"),
    ("职业病诊断书编号：ZYB-2023-0117", "ZYB-2023-0117"),
    ("，器官捐献登记卡号：330000 2024 0001，", "330000 2024 0001"),
    ("车辆登记证号：粤B20190077345", "粤B20190077345"),
])
def test_any_number_label_with_a_colon(text, value):
    assert [text[s.start : s.end] for s in D89.find(text) if s.type == "record"] == [value]


@pytest.mark.parametrize("text", ["床号：12", "药品批号：H20240511", "型号：XR-2000", "密码：1234", "邮政编码：100083",
                                  "病房号：1203", "得分：1234", "3号楼：1203室", "楼号：7"])
def test_number_labels_that_are_no_identifiers_stay(text):
    assert D89.scrub(text)[0] == text


@pytest.mark.parametrize("text,kind,value", [
    ("母亲住在宜宾市翠屏区康乐养老院，已三年。", "hospital", "宜宾市翠屏区康乐养老院"),
    ("转入绵阳市安宁护理院继续康复。", "hospital", "绵阳市安宁护理院"),
    ("客服热线 800 810 1234 周一至周五接听", "phone", "800 810 1234"),
])
def test_care_homes_and_service_numbers(text, kind, value):
    assert [text[s.start : s.end] for s in D89.find(text) if s.type == kind] == [value]


@pytest.mark.parametrize("text", ["到正规养老院看看。", "养老院的护工很好。", "剂量800 mg，每日2次。", "收缩压400 mmHg不可能。"])
def test_care_home_words_and_doses_stay(text):
    assert D89.scrub(text)[0] == text


# ---- round 7 (part 12's families outside wards, each case written for these tests; every name case fails before the
# round, checked against 752b9e3)

R7_ROLE_NAMES = [
    # roles of village clinics, schools, care homes, blood services, insurance and mediation name who follows them
    ("户主张桂兰家有两位老人需要随访。", ["张桂兰"]),  # (主张 is a word: the role is whole)
    ("调解员洪亮主持调解。", ["洪亮"]),  # (an ordinary word after the role)
    ("全科医生方丽转诊患者。", ["方丽"]),  # (a weak surname after the role)
    ("随访对象：齐海洋本人", ["齐海洋"]),
    ("保育员林芳芳发现孩子发热。", ["林芳芳"]),
    # 阿 + a given-name character after a person word, or before 姐/哥 used as address
    ("志愿者阿梅陪老人聊天。", ["阿梅"]),
    ("护工阿红很细心。", ["阿红"]),
    ("多亏阿玲姐提醒我复查。", ["阿玲"]),
]


@pytest.mark.parametrize("text,names", R7_ROLE_NAMES)
def test_round7_roles_outside_wards(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "户主家里有四口人。", "请联系负责人。", "投保人需如实告知。", "被保险人因疾病住院的可以理赔。", "献血者需年满18周岁。",
    "当事人双方达成协议。", "班主任老师很负责。", "校医室在一楼。", "护工很辛苦。", "志愿者为老人理发。", "调解员依法调解。",
    "受益人为法定继承人。", "申请人应当提交材料。", "持证人须本人到场。", "随访对象为高血压患者。", "患者姓名为必填项。",
    "全科医生方便的时候再来。", "志愿者们很热情。", "工作人员正在核对。", "村医建议去县医院。", "我是阿里的员工。",
    "阿姨姐姐都来了。", "阿胶吃了一年。", "护工阿姨很耐心。",
])
def test_round7_roles_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


R7_NICKNAMES = [
    # village nicknames: a surname + 老 + a birth-order numeral, whole; a numeral + 娃/妞 opening a clause
    ("五保户郝老二，独居，腿脚不便。", ["郝老二"]),
    ("邻村的麻老五昨天来拿药。", ["麻老五"]),  # (a weak surname after 的)
    ("雷老幺血压控制不好。", ["雷老幺"]),
    ("三妞发烧两天，在家吃过退烧药。", ["三妞"]),
    ("四娃咳嗽一周。", ["四娃"]),
    # 老 + a surname + 家的: a family (jieba's 刘家 is a name word, no ordinary word)
    ("老刘家的儿媳来量血压。", ["刘"]),
]


@pytest.mark.parametrize("text,names", R7_NICKNAMES)
def test_round7_village_nicknames(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "老三老四都在外地打工。", "他排行老三。", "我家老二发烧了。", "大娃上小学，二娃上幼儿园，都感冒了。", "生了二娃以后腰一直疼。",
    "二娃出生后我一直失眠。", "大娃还好，二娃发烧三天了。", "老公家的人都有高血压。", "他是家里的老大。", "老师家长会改期了。", "活到老学到老。",
])
def test_round7_nicknames_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


R7_TITLED = [
    # a weak surname before a title, with a second anchor: a field colon and the clause's end, a role word, or a clause start
    # and what a person does to the speaker
    ("主治医师：方医生。", ["方"]),
    ("随访医生：时大夫，电话随访。", ["时"]),
    ("社区工作人员向护士负责建档。", ["向"]),
    ("上午，于医生让我们先做心电图。", ["于"]),
    # a role, then a strong surname alone, then what a person reports
    ("夜班护士秦报告患者血压下降。", ["秦"]),
    ("值班医生鲍表示暂不手术。", ["鲍"]),
    # a strong surname + 爸爸/妈妈; a newborn called by the family's surname
    ("今天是唐妈妈陪孩子来的。", ["唐"]),
    ("早产儿韦宝宝今日体重1850g。", ["韦"]),
    # 小 + a surname jieba calls a noun, after a staff role
    ("康复师小陆帮患者做被动活动。", ["陆"]),
]


@pytest.mark.parametrize("text,names", R7_TITLED)
def test_round7_titled_surnames(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "请向医生咨询。", "向医生说明病情。", "于医生处就诊。", "全科医生建议转诊。", "和医生沟通一下。", "护士长说明天查房。",
    "护士张贴了通知。", "医生陈述病情。", "我家宝宝发烧了。", "孩子妈妈说孩子发烧。", "新生儿黄疸。", "当妈妈以后很累。",
    "熊猫宝宝很可爱。", "医生说多喝水。", "患者向医生咨询。", "患者于医生处就诊。", "家属与医生沟通。", "家属向医生说明情况。",
    "爷爷和奶奶都有高血压。", "原来医生曾建议我复查。", "联系人：全科医生。", "护士小米粥吃了吗？", "新生儿龙宝宝很多。",
])
def test_round7_titled_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


R7_COLON_AND_NAMING = [
    # 姓名为/姓名是 after a person's name field
    ("其姓名为白雪，女。", ["白雪"]),
    ("家属姓名是符强。", ["符强"]),
    # a full name at a colon: a speaker opening a line, the whole value of a field (given names that are nouns: 春花, 金花)
    ("范金花：收到，马上过去。", ["范金花"]),
    ("岑春花：收到。", ["岑春花"]),
    ("低保复核：范金花，材料齐全。", ["范金花"]),
]


@pytest.mark.parametrize("text,names", R7_COLON_AND_NAMING)
def test_round7_colon_and_naming(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "患者姓名为必填项。", "家属姓名是什么？", "金银花：清热解毒。", "何首乌：补肝肾。", "车前草：利尿。", "高血压：长期服药。",
    "诊断：贾第虫病，", "用药：林可霉素，", "黄连素：每日三次。", "胡萝卜：富含维生素。", "注意：饮食清淡。",
    "分型：危重型：出现休克。", "危重型：出现休克。",
])
def test_round7_colon_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,value", [
    # a number label with no colon when the value has six digits or more (spaced groups too)
    ("采血后献血码1208 3377 4105 61已贴于血袋。", "1208 3377 4105 61"),
    ("保单号8812 0034 5521，已生效。", "8812 0034 5521"),
    ("残疾人证号33010219650412 已核验", "33010219650412"),
    # an official file number after a number label, colon or not; labels of up to 18 characters
    ("区卫生健康局医疗纠纷人民调解委员会受理编号：浙调〔2024〕第12号。", "浙调〔2024〕第12号"),
    ("理赔案号LP〔2023〕0457号", "LP〔2023〕0457号"),
    ("县农村合作医疗管理委员会报销审核单号：NH-2024-00318", "NH-2024-00318"),
    # a label ending in 号 alone with no colon, a value opening with a place's abbreviation, a court case number
    ("参保人员社保号 4401 0019 7703 21", "4401 0019 7703 21"),
    ("居住证号码：粤居2023005678", "粤居2023005678"),
    ("案件编号（2023）粤0104民初5678号", "（2023）粤0104民初5678号"),
])
def test_round7_records_without_colon_and_long_labels(text, value):
    assert [text[s.start : s.end] for s in D89.find(text) if s.type == "record"] == [value]


@pytest.mark.parametrize("text", [
    "网上药店的订单号202405120934567812，还没发货。", "长链非编码RNA01980在肝癌中高表达。", "编码2400个氨基酸。",
    "长链非编码RNA019803在肝癌中高表达。",
    "发文字号：国发〔2024〕5号", "验证码123456", "药品批号H20240511", "邮政编码100083", "第3号药", "编号1-3的病人",
    "信号123456", "挂号费123456元", "型号XR200012", "第3号床",
])
def test_round7_number_labels_that_are_no_records_stay(text):
    spans = [(s.type, text[s.start : s.end]) for s in D89.find(text)]
    assert all(k != "record" for k, _ in spans), spans


R7_GIVEN_AND_PET = [
    # a doubled pet name opening a quotation or after a report verb, then a habit or time word
    ("奶奶说“朵朵平时不爱喝水”。", ["朵朵"]),
    ("班主任反映乐乐最近总说肚子疼。", ["乐乐"]),
    ("老师说贝贝最近不爱吃饭。", ["贝贝"]),
    # a doubled given name before 姐/哥 whatever jieba's tag (婷婷 is a status word to it)
    ("莹莹姐，帮我看一下8床。", ["莹莹"]),
    ("婷婷姐，12床的家属找你。", ["婷婷"]),
    # a given name between 由/让/请 and what a colleague takes over
    ("她的病人由雅琴代管。", ["雅琴"]),
    ("夜里由梦瑶接管，", ["梦瑶"]),
    ("今晚由海燕代班。", ["海燕"]),  # (an ordinary word: 由 and the takeover say "person")
    # a forum poster's nickname before a colon
    ("楼主丁丁：孩子咳嗽一周了。", ["丁丁"]),
]


@pytest.mark.parametrize("text,names", R7_GIVEN_AND_PET)
def test_round7_given_and_pet_names(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "“谢谢你们。”", "“天天吃药也不见好。”", "“慢慢来，不着急。”", "“统统不要了。”", "“哈哈也太好笑了”", "他说常常不舒服。",
    "医生说渐渐就好了。", "老师反映最近上课常打瞌睡。", "“星星也出来了”", "“好好休息”", "“刚刚吃过了”", "由专人负责。",
    "由医生负责。", "由家属陪同。", "由此负责。", "楼主：宝宝9个月", "楼主你好：请问", "楼主说的对：要去医院", "楼主高血压：怎么办",
    "楼主宝宝：发烧了", "好好姐，别客气。", "楼主说得对：要去医院",
])
def test_round7_given_and_pet_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


R7_WEAK_ELDERS = [
    # a weak surname before an elder's form of address (no preposition takes 阿姨/大爷 there), or asked for by title
    ("今天常阿姨陪她来复查。", ["常"]),
    ("花奶奶的血压又高了。", ["花"]),
    ("管大爷昨晚没睡好。", ["管"]),
    ("是安大妈送她来的。", ["安"]),
    ("找于大夫看病。", ["于"]),
    ("问问文医生吧。", ["文"]),
    ("“春红阿姨”是护士们对她的称呼。", ["春红"]),  # (a given name before 阿姨: not 红 as a weak surname)
]


@pytest.mark.parametrize("text,names", R7_WEAK_ELDERS)
def test_round7_weak_surnames_before_elder_words(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "宿管阿姨发现孩子发烧。", "楼管大爷帮忙叫了车。", "保安大爷帮忙叫了车。", "邻居阿姨很热心。", "向阿姨借了点钱。", "和奶奶一起住。",
    "那时奶奶还在。", "平时爷爷带孩子。", "同时奶奶也病了。", "当时大妈不在家。", "请于医生处取药。",
])
def test_round7_elder_words_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a surname + a one-character elder form (王姨, 李叔, 张婶), as neighbours and colleagues are called
    ("葛姨今天没来上班。", ["葛"]),
    ("邹叔帮我挂了号。", ["邹"]),
    ("隔壁的蒋婶在家照顾孙子。", ["蒋"]),
])
def test_round7_one_character_elder_forms(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["小姨来看我了。", "他大姨也有糖尿病。", "我表叔是医生。", "姑姨都来了。", "师叔也来了。",
                                  "他的小叔子也有高血压。"])
def test_round7_elder_forms_keep_kin_words(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # an ordinary word as the value of a role field outside wards, ending its clause (no dialogue turn there)
    ("校医：平安，发现学生高热。", ["平安"]),
    ("护工：常青，负责3号房间。", ["常青"]),
    ("户主：方正，家庭人口4人。", ["方正"]),
])
def test_round7_role_field_values(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["护工：负责，认真。", "院长：好的，我马上来。", "班主任：明天上课。", "户主：不详，",
                                  "医生：平时多喝水，少熬夜。"])
def test_round7_role_fields_keep_verdicts_and_dialogue(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # an ordinary word as a name when a sex and an age follow it where a line or a field starts
    ("江海，男，56岁，高血压三年。", ["江海"]),
    ("随访：方圆，女，42岁，糖尿病。", ["方圆"]),  # (方 is a verbal surname: the sex and age vouch)
    ("高峰 男 67岁 COPD", ["高峰"]),
    ("和平，男，71岁，冠心病。", ["和平"]),  # (even 和: the sex and age vouch)
    # ... or an age right after a role word
    ("户主方正今年60岁。", ["方正"]),
])
def test_round7_word_names_before_sex_and_age(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "发热，男，56岁，咳嗽。", "高热，男，56岁。", "黄疸，男，3岁。", "白斑，女，30岁", "方案：男，56岁", "常规，男，40岁",
    "病史：男，56岁", "儿子今年30岁。", "患者今年56岁。", "患者年龄为41岁，外阴白斑。", "患者年龄45岁，近期运动过量。",
    "首先患者应当在60岁以下。", "患者时年56岁。", "患者年满18岁。",
])
def test_round7_sex_and_age_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a name before 本人 as a field's value; the people of accident and police reports
    ("随访对象：于建新本人", ["于建新"]),
    ("伤者黄河，男，34岁。", ["黄河"]),
    ("受害人秦岭被送往医院。", ["秦岭"]),
    ("老人宁静，女，80岁，住院三天。", ["宁静"]),  # (a person word, then an ordinary word, a sex and an age)
    # a weak surname + title after a role that ends in a title itself
    ("班主任文老师打电话说孩子发烧。", ["文"]),
])
def test_round7_report_roles_and_self(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["请患者本人签字。", "随访对象：本人", "伤者多为老人。", "受害人需要及时报警。", "班主任老师很负责。"])
def test_round7_report_roles_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a child's household nickname before a child's age or a time word
    ("小胖今年5岁，体重超标。", ["小胖"]),
    ("我家大妞最近总说肚子疼。", ["大妞"]),
    ("虎子今天打了疫苗。", ["虎子"]),
    # one given-name character + 姐/哥 as a colleague's form of address
    ("霞姐说明天带孩子来复查。", ["霞"]),
    ("红姐，3床输液完了。", ["红"]),
])
def test_round7_short_forms(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "伟哥，能治病吗？", "大哥，帮我一下。", "老哥，你好", "表姐说明天来。", "宝宝今年3岁。", "小宝宝今年3岁。",
    "大宝今年6岁，二宝3岁。", "小龙虾今天吃了。", "狗子最近不吃东西。",
])
def test_round7_short_forms_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a surname said before 姓 and a person word; 小 + a weak surname after a staff role
    ("韦姓患者，女，62岁。", ["韦"]),
    ("一名覃姓男子被送来。", ["覃"]),
    ("养老院护理员小满给老人洗澡。", ["满"]),
    ("护士小方帮我换药。", ["方"]),
])
def test_round7_surname_mentions(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["护士小心地扶起老人。", "护士小时候就想当医生。", "医生小结：病情稳定。", "百姓患者很多。",
                                  "护士小于三人不能排班。"])
def test_round7_surname_mentions_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a role, a word jieba knows as a name, then a time word or 已/因
    ("护工常青今天请假。", ["常青"]),
    ("负责人方正已签字。", ["方正"]),
])
def test_round7_role_then_word_name_then_time(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["当事人双方已达成协议。", "护工今天请假。", "志愿者们今天来了。", "家属谢谢已经说过了。",
                                  "被保险人平时已经戒烟。"])
def test_round7_role_then_time_keeps_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,value", [
    # village clinics (卫生室, 卫生所) and township health centres named by a chain of place units, whatever jieba's tags
    ("在石门坎村卫生室打了针。", "石门坎村卫生室"),
    ("到龙胜县平等乡卫生院就诊。", "龙胜县平等乡卫生院"),
    ("到龙胜县三门镇卫生院就诊。", "龙胜县三门镇卫生院"),
    ("在大寨村卫生所看过。", "大寨村卫生所"),
])
def test_round7_village_clinics(text, value):
    assert [text[s.start : s.end] for s in D89.find(text) if s.type == "hospital"] == [value]


@pytest.mark.parametrize("text", ["到村卫生室打针。", "学校卫生室的老师。", "去卫生室拿药。", "我们村卫生室没有药。", "去乡镇卫生院看看。",
                                  "必须盖有乡镇卫生院以上医疗机构公章。", "提供给A县几个村卫生室，", "建议去当地乡卫生院。"])
def test_round7_clinic_words_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a weak surname + title after words that point at a person (多亏了, 那位, 是, 问了, 听说, 挂了) or before 的号
    ("这次多亏了时医生，不然孩子就危险了。", ["时"]),
    ("那位应老师特别负责。", ["应"]),
    ("是常大夫给我做的手术。", ["常"]),
    ("我问了查医生，他说没事。", ["查"]),
    ("下周想约明主任的号。", ["明"]),
])
def test_round7_weak_surnames_pointed_at(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["这是向医生咨询的结果。", "是于医生处开的药。", "是和医生一起的。", "听说向医生请教过。"])
def test_round7_pointing_words_keep_prepositions(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # the people of maternal care and village records name who follows them
    ("孕妇周小燕，孕30周，血压偏高。", ["周小燕"]),  # (not 燕 alone: the role names the whole name)
    ("理赔回访：客户鲁大海表示已收到赔款。", ["鲁大海"]),
])
def test_round7_village_and_maternal_roles(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["孕妇需要补铁。", "村民都来了。", "五保户老人。", "避免顾客修指甲时受伤。", "村民修路时受伤。",
                                  "客户满意度很高。", "客户修改了地址。", "客户高度评价。"])
def test_round7_village_roles_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # one's own kin word, an ordinary word, then a time word or an adverb of what a person does
    ("我老公方圆在外地打工。", ["方圆"]),
    ("我婆婆金花最近总咳嗽。", ["金花"]),
])
def test_round7_kin_then_word_name(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "我爸单位最近体检了。", "我老公公司最近很忙。", "我妈身体一直不好。", "我爸工作也很累。", "我妈血压最近偏高。", "我爸年纪也大了。",
    "我妈眼睛最近模糊。", "我老公平时也抽烟。", "我爸老家在农村。", "我妈高血压也有。", "我老公胃病又犯了。", "我爸明天也来。",
    "我爸明明也没喝酒。",
])
def test_round7_kin_then_word_keeps_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,kind,value", [
    # dates of birth in Chinese numerals; addresses after 现居/现居住在/暂住在
    ("出生于一九五六年八月，务农。", "dob", "一九五六年八月"),
    ("二〇〇三年五月十二日出生。", "dob", "二〇〇三年五月十二日"),
    ("现居黔东南州凯里市大十字街道。", "address", "黔东南州凯里市大十字街道"),
])
def test_round7_chinese_numeral_births_and_residences(text, kind, value):
    assert [text[s.start : s.end] for s in D89.find(text) if s.type == kind] == [value]


@pytest.mark.parametrize("text", ["一九九八年参加工作。", "现居家养老。", "暂住证办好了。", "二〇二〇年疫情期间。"])
def test_round7_numeral_years_and_居_words_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a given name of the 1950s-70s (a word too) before 叔/婶/伯 as a form of address
    ("建国叔今天来复诊了。", ["建国"]),
    ("卫东伯也来了。", ["卫东"]),
])
def test_round7_given_names_before_uncle_and_aunt(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["我小姨，今年50岁。", "表叔说不用去。", "大伯今天来了。", "师叔也来了。", "基础建设，也要跟上。"])
def test_round7_uncle_and_aunt_words_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a married woman named by her surname + 氏 after a person word
    ("理赔材料由其妻子蒙氏代为提交。", ["蒙"]),
    ("患者黎氏，女，70岁。", ["黎"]),
])
def test_round7_surname_shi(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["患者韦氏量表评分低。", "患者巴氏涂片阴性。", "患者魏氏法血沉增快。", "革兰氏阳性菌。"])
def test_round7_eponyms_with_shi_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


# ---- round 8 (parts 13-14 seen): every case below fails on 266b556 ----
@pytest.mark.parametrize("text,kind,value", [
    # a record whose label names an online consultation's or a purchase's order, a staff number or an entitlement code
    ("上回复诊订单号FZ20231102774510里医生让我补传化验单。", "record", "FZ20231102774510"),
    ("护工秦某（工号H30281）负责夜间翻身。", "record", "H30281"),
    ("保洁员工号5512，当班时发现患者跌倒。", "record", "5512"),
    ("慢病待遇资格编码MB5101202300872，每月可报销。", "record", "MB5101202300872"),
    # an ID a few words after its label in the same clause, whatever its check digit (copied by hand, often wrong)
    ("身份证号码已复印（350102198807124419），原件已归还。", "id", "350102198807124419"),
    ("证件号码核对无误，为52010219791105306X。", "id", "52010219791105306X"),
    # institutions that place a person: care apartments, named pharmacies with their branch
    ("出院后入住江北区康乐老年公寓。", "hospital", "江北区康乐老年公寓"),
    ("在益丰大药房（城南路店）买了布洛芬。", "hospital", "益丰大药房（城南路店）"),
    ("药是在百姓缘大药房买的。", "hospital", "百姓缘大药房"),
])
def test_round8_records_ids_and_institutions(text, kind, value):
    assert [text[s.start : s.end] for s in D89.find(text) if s.type == kind] == [value], D89.find(text)


@pytest.mark.parametrize("text", [
    "快递订单号2024031500123已签收。", "网购订单号123456789查不到。", "基因编码序列有突变。", "工号牌要佩戴整齐。",
    "身份证复印件2份，床号12。", "身份证已带，血糖为12.3。", "去药房拿药。", "医院药房下班了。", "大药房里买的。",
    "老年公寓很多。", "总院和分院都能做。", "在药店买的感冒药。",
    "在一家大药房买的。", "附近大药房有卖。", "去大药房问问。", "小区门口大药房关门了。", "连锁大药房都有。",
])
def test_round8_number_and_place_words_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


R8_ROLE_FULL = [
    # a role that names one person, then a full name whatever its surname (weak, verbal, rare) and whatever word its
    # first two characters make (方志, 游子), when a boundary or what that person does follows
    ("主治医师方志刚审阅后同意手术。", ["方志刚"]),
    ("签字人喻长青，与患者关系：父子。", ["喻长青"]),
    ("长子尚志军、次女尚志芳均在场。", ["尚志军", "尚志芳"]),
    ("受试者安国庆筛选期血常规正常。", ["安国庆"]),
    ("取药人计文斌，代为领取。", ["计文斌"]),
    ("接报护士凡晓丽记录后通知医生。", ["凡晓丽"]),
    ("高一(2)班龙俊杰，体育课摔伤左腕。", ["龙俊杰"]),
]


@pytest.mark.parametrize("text,names", R8_ROLE_FULL)
def test_round8_role_then_full_name(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "上级医师查房后同意出院。", "长子高血压多年。", "受试者血压正常。", "受试者于第14天完成访视。", "签字人须为患者本人。",
    "购药人需出示身份证。", "长女常年在外地。", "次子安排了住院。", "接诊医生详细询问病史。", "值班医生及时处理。",
    "受试者应于每天早晨服药。", "三年级2班同学集体体检。", "签字人关系：父子。", "长子方面没有意见。", "主治医师同意转科。",
    "受试者全部完成随访。", "长子平时工作忙。", "值班护士巡视病房。", "她扔我老公东西，还骂人。",
])
def test_round8_role_then_ordinary_words_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


R8_ROLE_GIVEN = [
    # the same roles, then a given name alone, 阿 + a minority name, or an ordinary word before what a person does
    ("签字人为患者儿媳喜凤，已告知风险。", ["喜凤"]),
    ("由社工阿米娜，陪同办理出院。", ["阿米娜"]),
    ("患者外孙女思彤，负责日常照护。", ["思彤"]),
    ("其外孙女田甜在旁陪同。", ["田甜"]),
    ("长子国栋、次子国梁均同意手术。", ["国栋", "国梁"]),
]


@pytest.mark.parametrize("text,names", R8_ROLE_GIVEN)
def test_round8_role_then_given_name(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "儿子明天来。", "女儿今年8岁。", "社工介入后情绪稳定。", "志愿者小组每周探访。", "儿子平时在外地。", "女儿高烧已退。",
    "儿子高兴地说没事。", "长子常年在外。", "儿媳妇照顾得很好。", "孙女儿很乖。", "其孙女阅读说明书后签字。", "儿子孝顺，常来看望。",
    "女儿乖巧，成绩好。", "社工热心，态度好。", "长子长女都在外地。", "孙女小学三年级。", "儿子阿谀奉承。",
])
def test_round8_role_then_ordinary_words_stay_given(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a weak surname + title after a staff role ending in a title, or after a word asking for a person that jieba joins
    # to the surname (麻烦|文: 烦文 is in its dictionary); a strong compound surname after a time word (今天|皇甫: 天皇)
    ("病历由主治医师管医生补充完善。", ["管"]),
    ("上级医师时主任同意手术。", ["时"]),
    ("麻烦文护士帮我换药。", ["文"]),
    ("今天皇甫医生出诊吗？", ["皇甫"]),
])
def test_round8_surname_titles_after_roles_and_asking(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "麻烦医生帮忙看看。", "住院医师和医生一起查房。", "上级医师向医生交代病情。", "主治医师于医生办公室谈话。", "每天医生都来查房。",
    "上级医师常规查房。", "住院医师应医嘱执行。", "麻烦护士换药。", "今天医生没来。",
])
def test_round8_titles_after_roles_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a labelled list of people (…名单：) whose items are names once two of them plainly are; a guard word (安静) as the
    # whole value of a person field up to the next label
    ("随访名单：安静、韦建华、沈丽，请按时复诊。", ["安静", "韦建华", "沈丽"]),
    ("复诊名单：方正、于海、米兰", ["方正", "于海", "米兰"]),
    ("值班护士：安静 值班医生：郑宏", ["安静", "郑宏"]),
])
def test_round8_name_lists_and_field_values(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "复查名单：血常规、肝功能、肾功能。", "患者：安静。", "护士：安静休息。", "用药名单：甘草、黄芪、当归。", "黑名单：无。",
    "名单：待定、暂缺。", "护士：安静，不要说话。", "采购名单：口罩、手套、酒精。",
])
def test_round8_lists_and_fields_keep_ordinary_words(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text", [
    "是否同意输血：☑同意 （由家属勾选）。", "请在相应选项前勾选。", "签约团队：公卫医师、护士各一名。", "本人勾画的部分已确认。",
])
def test_round8_form_verbs_and_posts_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a bare strong surname as a role field's whole value; a pupil or resident before how others call them; a chat speaker
    # called 阿X; a given name quoted after a person word
    ("急救调度员：邵，班次：白班", ["邵"]),
    ("负责人：王，电话另附。", ["王"]),
    ("五年级豆豆同学上课时晕倒。", ["豆豆"]),
    ("老人常乐爷爷今天下棋赢了。", ["常乐"]),
    ("【家属群】阿彬：明天几点探视？", ["阿彬"]),
    ('患者女儿"晓雯"打来电话询问。', ["晓雯"]),
])
def test_round8_address_forms(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "记录员：无，", "检查者：同上。", "老人家爷爷奶奶都在。", '患者家属"满意"。', "三年级同学都来了。", "阿姨：你好。",
    '患者"阿司匹林"过敏。', "老人孙子同学来了。", "操作者：双人核对，", "审核人：通过。", "五年级同学一起体检。",
])
def test_round8_address_forms_keep_ordinary_sentences(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # a strong surname + 主治 (the attending) before what the attending does, after a slash or a bracket
    ("记录：住院医师（规培）/韩主治审核", ["韩"]),
    ("由规培医师执笔/孔主治审阅。", ["孔"]),
])
def test_round8_attending_by_surname(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["本方主治风寒感冒。", "该药主治失眠多梦。", "黄芪汤主治气虚。", "主治医师查房。", "此丸主治意见不一。"])
def test_round8_indications_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,value", [
    # a county + town + village chain after 为 (患者为X县Y镇Z村五保户): 为 says "is", like 是
    ("患者为临泉县杨桥镇王庄村低保户。", "临泉县杨桥镇王庄村"),
])
def test_round8_county_chain_after_wei(text, value):
    assert [text[s.start : s.end] for s in D89.find(text) if s.type == "address"] == [value]


@pytest.mark.parametrize("text", ["分为县乡两级。", "以县为单位，乡镇为基础。", "患者为本县城关镇人。"])
def test_round8_county_words_after_wei_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # after a person role and its colon, a three-character value filling the field is a name whatever its surname
    # (撖, 闪, 茆, 羌 are on no list): no dictionary word, given-name characters after the first
    ("接诊医生：撖宇航，邮箱见下。", ["撖宇航"]),
    ("主刀医师：闪志明", ["闪志明"]),
    ("值班护士：茆丽娟，", ["茆丽娟"]),
    ("责任护士：羌秀英， 联系电话见护士站。", ["羌秀英"]),
    ("取件人：撖宇航，电话另附。", ["撖宇航"]),  # (any field named after who fills it: 取件人 is on no list)
])
def test_round8_unlisted_surname_in_role_field(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "主治医师：同上，", "记录者：见附页，", "审核人：已审核，", "值班医生：请假中", "值班护士：待定，", "经治医师：详见前，",
    "责任护士：无此人，", "签字人：患者本人", "值班医生：暂缺。", "主刀医师：外院的", "主管医生：请联系", "接诊医生：未签名，",
    "取件人：快递员，", "联系人：本人", "审核者：同上", "负责人：待定", "送检人：护工，", "陪诊员：暂无，",
])
def test_round8_role_field_values_that_are_no_names_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # 小 + a given-name character opening a quotation, then a question after someone (jieba calls 小兵, 小军 nouns)
    ("老人反复问“小兵什么时候来接我”。", ["小兵"]),
    ('她总念叨"小军还没回来"。', ["小军"]),
])
def test_round8_quoted_xiao_names(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["“小孩什么时候能打疫苗？”", "“小便什么时候能正常？”", "“小心什么时候都不为过。”", "“小米什么时候能吃？”",
                                  "“小腿还没消肿。”", "“小狗呢？”", "“小猫还没回来。”"])
def test_round8_quoted_xiao_words_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # family duties shared out by given name in two clauses or more: a given name, a time of day, coming or going
    ("秀兰今天陪夜，志刚明天白天来接班。", ["秀兰", "志刚"]),
    ("凤英今天去缴费，建华晚上来陪床。", ["凤英", "建华"]),
])
def test_round8_family_duties_by_given_name(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", [
    "海燕明天来，", "血压明天复查，血糖下午再测。", "我们明天去，他们下午来。", "儿子明天来，女儿下午来。", "大家明天来，孩子下午来。",
    "妈妈明天来，爸爸下午来。", "老师明天来，同学下午来。", "护士明天来，医生下午来。", "药师今天休，护士晚上到。", "家属明天来，病人下午去。", "早饭明天送，午饭中午送。",
])
def test_round8_duty_clauses_without_names_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # the same without a colon: a role, then a name on no surname list that fills its clause
    ("签字人撖宇航，与患者关系：父子。", ["撖宇航"]),
    ("受试者茆丽娟，筛选失败。", ["茆丽娟"]),
])
def test_round8_unlisted_surname_after_role(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["长子患糖尿病。", "签字人系患者本人。", "受试者均签署知情同意书，", "购药人须实名，", "长子在外地，",
                                  "受试者需空腹，", "签字人应为患者本人。", "长子刚出差，"])
def test_round8_role_then_clause_stays(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # the patient or a party, a word of a strong surname, then what one does with the consent
    ("患者万山已知晓手术风险，本人签字。", ["万山"]),
    ("受试者高山已签字确认。", ["高山"]),
])
def test_round8_consenting_word_names(text, names):
    assert _names(text) == names


@pytest.mark.parametrize("text", ["患者家属已知晓。", "患者全家已知晓。", "患者父母已同意。", "患者本人已签字。", "患者及家属已知情同意。",
                                  "患者病情已知晓。", "患者单位已同意。", "患者黄疸已消退。", "患者对此已了解。", "患者一方已签字。"])
def test_round8_consent_words_stay(text):
    assert D89.scrub(text)[0] == text, D89.find(text)


@pytest.mark.parametrize("text,names", [
    # where the round-8 names end: not into what the person does (代签, 诉), not from inside a kin word (其孙|子), a full name
    # before 主治医师 stays whole, a title after a surname is no given name
    ("由蔺红霞主治医师查房。", ["蔺红霞"]),
    ("来电者为其孙子曲浩，称老人摔倒。", ["曲浩"]),
    ("委托人董晓代签同意书。", ["董晓"]),
    ("受试者欧阳明诉头晕。", ["欧阳明"]),
    ("值班医师申医生已到场。", ["申"]),
])
def test_round8_name_ends(text, names):
    assert _names(text) == names
