"""The recipe runner: typed configs, validation, manifests, skip-when-unchanged, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hypnos.common.runner import load_recipe, read_manifest, run_recipe, validate_recipe
from hypnos.common.stage import ConfigError
from hypnos.stages import STAGES

TESTS = Path(__file__).parent
STAGES["copy"] = "runner_stages"  # a real stage module written for these tests


def _rows(path: Path, n: int, drop: tuple = ()) -> Path:
    with path.open("w") as f:
        for i in range(n):
            row = {"id": f"r{i}", "text": f"第{i}行：丙泊酚诱导。"}
            if i in drop:
                row["meta"] = {"drop": True}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _recipe(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(textwrap.dedent(body), encoding="utf-8")
    return p


TWO_STAGES = """\
    name: t
    stages:
      - name: first
        kind: copy
        source: rows.jsonl
        marker: a
      - name: second
        kind: copy
        source: "@first"
    """


def test_unknown_key_names_file_line_and_key(tmp_path):
    p = _recipe(tmp_path, """\
        name: t
        stages:
          - name: first
            kind: copy
            source: rows.jsonl
            sorce_typo: 1
        """)
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert f"{p}:6" in str(e.value) and "sorce_typo" in str(e.value) and "unknown key" in str(e.value)


def test_unknown_kind_and_duplicate_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown kind 'nope'"):
        load_recipe(_recipe(tmp_path, "name: t\nstages:\n  - {name: a, kind: nope}\n"))
    with pytest.raises(ConfigError, match="duplicate stage name"):
        load_recipe(_recipe(tmp_path, "name: t\nstages:\n  - {name: a, kind: copy, source: x}\n"
                                      "  - {name: a, kind: copy, source: x}\n"))


def test_validate_finds_missing_files_and_bad_refs(tmp_path):
    p = _recipe(tmp_path, """\
        name: t
        stages:
          - {name: a, kind: copy, source: missing.jsonl}
          - {name: b, kind: copy, source: "@c"}
          - {name: c, kind: copy, source: "@nothere"}
        """)
    problems = validate_recipe(load_recipe(p, output_dir=tmp_path / "runs"))
    text = "\n".join(problems)
    assert "missing.jsonl" in text and "file not found" in text
    assert "'@c' refers to a later stage" in text
    assert "'@nothere' names no stage" in text


def test_run_writes_manifests_and_skips_unchanged(tmp_path):
    _rows(tmp_path / "rows.jsonl", 5, drop=(3,))
    recipe = load_recipe(_recipe(tmp_path, TWO_STAGES), output_dir=tmp_path / "runs")
    ms = run_recipe(recipe)
    m = read_manifest(tmp_path / "runs/t/first")
    assert m["status"] == "done" and m["counts"] == {"in": 5, "kept": 4, "dropped": 1}
    assert m["dropped"] == {"marked drop": 1}
    assert m["config"]["marker"] == "a" and "rows.jsonl" in m["inputs"] and "torch" in m["versions"]
    assert len((tmp_path / "runs/t/second/rows.jsonl").read_text().splitlines()) == 4
    assert not any(x.get("skipped") for x in ms)

    again = run_recipe(load_recipe(recipe.path, output_dir=tmp_path / "runs"))
    assert all(x.get("skipped") for x in again)

    # Changing the first stage's config re-runs it and, through the reference, the second.
    changed = run_recipe(load_recipe(recipe.path, ["first.marker=b"], output_dir=tmp_path / "runs"))
    assert [x.get("skipped", False) for x in changed] == [False, False]
    # Changing an input file's content re-runs too.
    _rows(tmp_path / "rows.jsonl", 6)
    third = run_recipe(load_recipe(recipe.path, ["first.marker=b"], output_dir=tmp_path / "runs"))
    assert read_manifest(tmp_path / "runs/t/second")["counts"]["in"] == 6
    assert not third[0].get("skipped")


def test_only_and_from(tmp_path):
    _rows(tmp_path / "rows.jsonl", 3)
    recipe = load_recipe(_recipe(tmp_path, TWO_STAGES), output_dir=tmp_path / "runs")
    with pytest.raises(ConfigError, match="has not finished"):
        run_recipe(recipe, only=["second"])
    assert [m["stage"] for m in run_recipe(recipe, only=["first"])] == ["first"]
    assert [m["stage"] for m in run_recipe(recipe, from_stage="second")] == ["second"]
    with pytest.raises(ConfigError, match="no stage named 'zzz'"):
        run_recipe(recipe, from_stage="zzz")


def test_killed_stage_resumes_without_redoing_work(tmp_path):
    _rows(tmp_path / "rows.jsonl", 40)
    recipe = _recipe(tmp_path, """\
        name: t
        stages:
          - {name: slow, kind: copy, source: rows.jsonl, delay_s: 0.05}
        """)
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(TESTS)!r})
        from hypnos.stages import STAGES; STAGES["copy"] = "runner_stages"
        from hypnos.common.runner import load_recipe, run_recipe
        run_recipe(load_recipe({str(recipe)!r}, output_dir={str(tmp_path / 'runs')!r}))
        """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    out = tmp_path / "runs/t/slow/rows.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 10):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(out.read_text().splitlines())
    assert 10 <= partial < 40
    assert read_manifest(tmp_path / "runs/t/slow")["status"] == "running"

    subprocess.run([sys.executable, "-c", code], check=True)
    m = read_manifest(tmp_path / "runs/t/slow")
    assert m["status"] == "done" and m["resumed"]
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(40))  # all there, none twice
    processed = (tmp_path / "runs/t/slow/processed.log").read_text().split()
    assert len(processed) <= 41  # at most the row in flight at the kill is redone


def test_cli_validate_reports_problems(tmp_path):
    p = _recipe(tmp_path, "name: t\nstages:\n  - {name: a, kind: dedup, bogus_key: 1}\n")
    r = subprocess.run([sys.executable, "-m", "hypnos.cli", "validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "bogus_key" in r.stderr and "Traceback" not in r.stderr


def test_env_vars_expand_with_defaults_and_fail_clearly(tmp_path, monkeypatch):
    _rows(tmp_path / "rows.jsonl", 2)
    body = "name: t\nstages:\n  # ${NOT_EXPANDED_IN_COMMENTS}\n  - {name: a, kind: copy, source: '${ROWS_DIR:-.}/rows.jsonl'}\n"
    r = load_recipe(_recipe(tmp_path, body))
    assert r.stages[0].config.source == "./rows.jsonl"
    monkeypatch.setenv("ROWS_DIR", str(tmp_path))
    assert load_recipe(_recipe(tmp_path, body)).stages[0].config.source == f"{tmp_path}/rows.jsonl"
    with pytest.raises(ConfigError, match=r"recipe.yaml:2: environment variable NOPE_X is not set"):
        load_recipe(_recipe(tmp_path, "name: t\nstages: ${NOPE_X}\n"))


def test_files_a_stage_reads_beyond_its_config_are_fingerprinted(tmp_path):
    """Eval tasks name their data in task YAMLs, not in the stage config: editing it must re-run eval."""
    from hypnos.common.runner import stage_inputs

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/demo.yaml", output_dir=tmp_path)
    inputs = stage_inputs(recipe, recipe.stage("eval"))
    assert any(k.startswith("file:") and k.endswith("anesthesia_mcq.jsonl") for k in inputs)


def test_single_stage_command_points_errors_at_the_users_config(tmp_path):
    cfg = tmp_path / "dedup.yaml"
    cfg.write_text("input: x.jsonl\nreferences: []\nthreshhold: 3\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "hypnos.cli", "dedup", "--config", str(cfg), "--output-dir",
                        str(tmp_path / "runs")], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"{cfg}:3: threshhold: unknown key" in r.stderr and "Traceback" not in r.stderr
