"""De-identification: hand-checked sentences, checksum validation, and precision/recall on synthetic cases."""

import json
import textwrap

from typer.testing import CliRunner

from hypnos.common.runner import load_recipe, run_recipe
from hypnos.data.deidentify import SYNTH_HOSPITALS, Deidentifier, evaluate, synthetic_cases, valid_resident_id


def test_resident_id_checksum():
    assert valid_resident_id("11010519491231002X")
    assert not valid_resident_id("110105194912310021")  # same body, wrong check digit
    assert not valid_resident_id("1101051949123100")


def test_hand_checked_sentences():
    d = Deidentifier(["青禾市第一人民医院"])
    cases = {
        "患者王建国，男，65岁，于青禾市第一人民医院行胆囊切除术，电话13812345678。":
            "患者[姓名]，男，65岁，于[医院]行胆囊切除术，电话[电话]。",
        "李主任与张某某家属沟通，家住浙江省杭州市西湖区文三路90号。": "[姓名]主任与[姓名]家属沟通，家住[地址]。",
        "身份证号11010519491231002X，医嘱编号110105194912310021。": "身份证号[身份证号]，医嘱编号110105194912310021。",
        "1985年3月12日出生，2023年5月1日手术。": "[出生日期]出生，2023年5月1日手术。",
        "座机(010)62345678，手机 138-1234-5678，住院号:ZY20230101": "座机[电话]，手机 [电话]，住院号:[住院号]",
        # clinical text that must stay as it is
        "请向医生咨询麻醉方式；患者张口困难；血压120/80mmHg，丙泊酚2mg/kg。":
            "请向医生咨询麻醉方式；患者张口困难；血压120/80mmHg，丙泊酚2mg/kg。",
        "经治医生与麻醉医生讨论后决定。": "经治医生与麻醉医生讨论后决定。",
    }
    for text, want in cases.items():
        assert d.scrub(text)[0] == want, text


def test_precision_and_recall_on_synthetic_cases():
    stats = evaluate(Deidentifier(SYNTH_HOSPITALS), synthetic_cases(300, seed=1))
    assert set(stats) == {"name", "id", "phone", "record", "address", "dob", "hospital", "all"}
    for kind, s in stats.items():
        assert s["recall"] >= 0.95 and s["precision"] >= 0.95, (kind, s)
    # without the hospital list, hospitals are missed: the evaluation can tell
    assert evaluate(Deidentifier(), synthetic_cases(300, seed=1))["hospital"]["recall"] == 0


def test_stage_scrubs_every_text_field_and_counts(tmp_path):
    rows = [{"id": "a", "instruction": "患者李某，电话13912345678，术前应注意什么？", "output": "联系王医生。",
             "category": "王医生"},
            {"id": "b", "conversations": [{"from": "human", "value": "我叫张伟，住院号：123456"},
                                          {"from": "gpt", "value": "您好"}]},
            {"id": "c", "text": "张某于青禾市第一人民医院就诊", "entities": []}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""\
        name: p
        stages:
          - {name: deidentify, input: in.jsonl, hospitals: [青禾市第一人民医院]}
        """))
    [m] = run_recipe(load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs"))
    out = [json.loads(x) for x in (tmp_path / "runs/p/deidentify/scrubbed.jsonl").read_text().splitlines()]
    assert out[0]["instruction"] == "患者[姓名]，电话[电话]，术前应注意什么？" and out[0]["output"] == "联系[姓名]医生。"
    assert out[0]["category"] == "王医生"  # labels are not text
    assert out[1]["conversations"][0]["value"] == "我叫张伟，住院号：[住院号]"  # 我叫 is no name pattern
    assert m["metrics"]["replaced"] == {"[姓名]": 3, "[电话]": 1, "[住院号]": 1, "[医院]": 1}
    assert m["counts"]["dropped"] == 1  # the NER row's spans no longer fit its text
    assert "13912345678" not in (tmp_path / "runs/p/deidentify/manifest.json").read_text()


def test_deid_eval_cli_prints_the_table():
    from hypnos.data.cli import app

    res = CliRunner().invoke(app, ["deid-eval", "--n", "50"])
    assert res.exit_code == 0, res.output
    assert "身份证号" in res.output and "recall" in res.output
