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

from hypnos.common.io import DataError
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
    r = subprocess.run([sys.executable, "-m", "hypnos.cli", "validate", str(p)], capture_output=True, text=True,
                       check=False)
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
                        str(tmp_path / "runs")], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert f"{cfg}:3: threshhold: unknown key" in r.stderr and "Traceback" not in r.stderr


# ---- issue 15, finding 11: fingerprints from upstream outputs; validate lists every problem -------------
def test_downstream_follows_upstream_output_not_its_manifest(tmp_path):
    _rows(tmp_path / "rows.jsonl", 4)
    recipe = _recipe(tmp_path, TWO_STAGES)
    runs = tmp_path / "runs"
    run_recipe(load_recipe(recipe, output_dir=runs))
    # A config change that leaves the first stage's output byte-identical: only the first stage re-runs.
    again = run_recipe(load_recipe(recipe, ["first.delay_s=0.001"], output_dir=runs))
    assert [m.get("skipped", False) for m in again] == [False, True]
    # A hand-edited upstream output is noticed: the downstream stage re-runs on it.
    out = runs / "t/first/rows.jsonl"
    out.write_text(out.read_text(encoding="utf-8").replace("第0行", "第零行"), encoding="utf-8")
    third = run_recipe(load_recipe(recipe, ["first.delay_s=0.001"], output_dir=runs))
    assert [m.get("skipped", False) for m in third] == [True, False]
    assert "第零行" in (runs / "t/second/rows.jsonl").read_text(encoding="utf-8")
    assert any("changed since the stage wrote it" in w for w in third[0].get("warnings", []))


def test_validate_lists_every_problem_and_checks_output_names(tmp_path):
    p = _recipe(tmp_path, """\
        name: t
        stages:
          - {name: a, kind: copy, source: rows.jsonl, typo_one: 1}
          - {name: b, kind: copy, source: "@a", typo_two: 2}
          - {name: c, kind: nope}
        """)
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert f"{p}:3" in msg and "typo_one" in msg and f"{p}:4" in msg and "typo_two" in msg
    assert f"{p}:5" in msg and "unknown kind 'nope'" in msg

    _rows(tmp_path / "rows.jsonl", 2)
    p = _recipe(tmp_path, """\
        name: t
        stages:
          - {name: a, kind: copy, source: missing.jsonl, encoding: klingon}
          - {name: b, kind: copy, source: "@a.nope"}
          - {name: c, kind: copy, source: "@a.rows"}
          - {name: d, kind: copy, source: "@c.rowz"}
        """)
    text = "\n".join(validate_recipe(load_recipe(p, output_dir=tmp_path / "runs")))
    assert "missing.jsonl" in text and "unknown encoding 'klingon'" in text
    assert "'@a.nope': stage 'a' has no output 'nope' (it has: rows)" in text
    assert "'@c.rowz'" in text and "'@a.rows'" not in text


# ---- issue 15, finding 4: on_error, empty input, stage-raised DataErrors --------------------------------
def test_quarantine_in_a_stage_counts_bad_rows_and_rows_the_stage_rejects(tmp_path):
    good = [json.dumps({"id": f"r{i}", "text": f"第{i}行"}, ensure_ascii=False) for i in range(4)]
    lines = [good[0].encode(), b'{"id": "x", "text": "\xff"}', good[1].encode(), b'{"id": "y"',
             json.dumps({"id": "z", "text": "REJECT me"}).encode(), good[2].encode(), good[3].encode()]
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    p = _recipe(tmp_path, "name: t\nstages:\n  - {name: a, kind: copy, source: rows.jsonl, on_error: quarantine}\n")
    (m,) = run_recipe(load_recipe(p, output_dir=tmp_path / "runs"))
    assert m["status"] == "done" and m["counts"]["in"] == 4
    src = str(tmp_path / "rows.jsonl")
    assert m["quarantined"][src]["rows"] == 3 and m["quarantined"][src]["read"] == 7
    q = [json.loads(x) for x in (tmp_path / "runs/t/a" / m["quarantined"][src]["file"]).read_text().splitlines()]
    assert [x["line"] for x in q] == [2, 4, 5] and q[2]["reason"] == "rejected by the copy stage"
    assert q[2]["raw"] == lines[4].decode()

    p2 = _recipe(tmp_path, "name: t2\nstages:\n  - {name: a, kind: copy, source: rows.jsonl}\n")
    with pytest.raises(DataError, match=r"rows\.jsonl:2: not valid UTF-8"):
        run_recipe(load_recipe(p2, output_dir=tmp_path / "runs"))


def test_empty_input_finishes_with_a_warning(tmp_path):
    (tmp_path / "rows.jsonl").write_text("")
    p = _recipe(tmp_path, "name: t\nstages:\n  - {name: a, kind: copy, source: rows.jsonl}\n")
    (m,) = run_recipe(load_recipe(p, output_dir=tmp_path / "runs"))
    assert m["status"] == "done" and any("rows.jsonl: no rows (empty input)" in w for w in m["warnings"])


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hypnos.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "HYPNOS_NO_PROGRESS": "1"}, check=False)


def test_cli_reports_bad_configs_and_bad_rows_as_messages(tmp_path):
    r = _cli("run", tmp_path)
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("sources:\n  - {path: a.jsonl\nval_fraction: 0.1\n", encoding="utf-8")
    r = _cli("mix", "--config", bad_yaml, "--output-dir", tmp_path / "runs")
    assert r.returncode == 2 and f"{bad_yaml}:3: invalid YAML" in r.stderr and "Traceback" not in r.stderr
    as_list = tmp_path / "list.yaml"
    as_list.write_text("- sources: []\n", encoding="utf-8")
    r = _cli("mix", "--config", as_list, "--output-dir", tmp_path / "runs")
    assert r.returncode == 2 and "a stage config is a mapping of field: value" in r.stderr
    r = _cli("mix", "--config", tmp_path, "--output-dir", tmp_path / "runs")
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "a", "text": "甲"}\n{"id": "b", "text": "乙", "meta": "oops"}\n', encoding="utf-8")
    cfg = tmp_path / "mix.yaml"
    cfg.write_text("sources:\n  - {path: rows.jsonl}\n", encoding="utf-8")
    r = _cli("mix", "--config", cfg, "--output-dir", tmp_path / "runs")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{rows}:2: meta: expected an object, got str" in r.stderr
    recipe = _recipe(tmp_path, "name: t\nstages:\n  - {name: m, kind: mix, sources: [{path: rows.jsonl}]}\n")
    r = _cli("run", recipe, "--output-dir", tmp_path / "runs")
    assert r.returncode == 1 and f"{rows}:2: meta" in r.stderr and "Traceback" not in r.stderr

    r = _cli("mix", "--config", cfg, "on_error=quarantine", "--output-dir", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    assert "1 bad row(s) quarantined" in r.stderr + r.stdout
    assert not list(tmp_path.glob("tmp*.yaml"))  # no temporary recipe left next to the user's config

    rows.write_text("")
    r = _cli("mix", "--config", cfg, "--output-dir", tmp_path / "runs")
    assert r.returncode == 0 and "no rows (empty input)" in r.stderr + r.stdout


def test_quarantine_under_two_processes_writes_each_bad_row_once(tmp_path):
    """torchrun, 2 CPU processes (gloo): quarantine files, counts and manifests are written once, by rank 0."""
    good = [json.dumps({"id": f"r{i}", "text": f"第{i}行：丙泊酚诱导。"}, ensure_ascii=False).encode() for i in range(5)]
    lines = [good[0], b'{"id": "x", "text": "\xff"}', good[1], b'{"id": "t", "title": "no text"}', *good[2:]]
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "bench.jsonl").write_text(json.dumps({"id": "b", "text": "与训练数据无关的一句话。"}, ensure_ascii=False) + "\n")
    p = _recipe(tmp_path, """\
        name: t
        stages:
          - {name: mix, kind: mix, on_error: quarantine, sources: [{path: rows.jsonl}]}
          - {name: decon, kind: decontaminate, on_error: quarantine, input: rows.jsonl, benchmarks: [bench.jsonl]}
        """)
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2",
                           "-m", "hypnos.cli", "run", str(p), "--output-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "HYPNOS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    src = str(tmp_path / "rows.jsonl")
    for stage, bad, out in (("mix", 1, "train.jsonl"), ("decon", 2, "kept.jsonl")):
        m = read_manifest(tmp_path / "runs/t" / stage)
        assert m["status"] == "done" and m["quarantined"][src]["rows"] == bad, m
        q = (tmp_path / "runs/t" / stage / m["quarantined"][src]["file"]).read_text().splitlines()
        assert len(q) == bad  # once, not once per process
        assert len((tmp_path / "runs/t" / stage / out).read_text().splitlines()) == 7 - bad


def test_a_declared_encoding_applies_to_inputs_not_to_earlier_stages_outputs(tmp_path):
    rows = [json.dumps({"id": f"r{i}", "text": f"第{i}行：硬膜外麻醉。"}, ensure_ascii=False) for i in range(3)]
    (tmp_path / "rows.jsonl").write_bytes("\n".join(rows).encode("gb18030") + b"\n")
    p = _recipe(tmp_path, """\
        name: t
        stages:
          - {name: first, kind: copy, source: rows.jsonl, encoding: gb18030}
          - {name: second, kind: copy, source: "@first", encoding: gb18030}
        """)
    run_recipe(load_recipe(p, output_dir=tmp_path / "runs"))
    out = [json.loads(x) for x in (tmp_path / "runs/t/second/rows.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in out] == [f"第{i}行：硬膜外麻醉。" for i in range(3)]


def test_bad_overrides_are_messages(tmp_path):
    p = _recipe(tmp_path, "name: t\nstages:\n  - {name: a, kind: copy, source: rows.jsonl, marker: x}\n")
    for override, msg in (("a.marker=[1,", "the value is not valid YAML"), ("a.source.x=1", "a.source is not a mapping"),
                          ("a=1", "name a field of the stage"), ("zz.x=1", "no stage named 'zz'")):
        with pytest.raises(ConfigError, match=msg):
            load_recipe(p, [override])
    cfg = tmp_path / "mix.yaml"
    cfg.write_text("sources: [{path: rows.jsonl}]\n", encoding="utf-8")
    r = _cli("mix", "--config", cfg, "val_fraction=[1,", "--output-dir", tmp_path / "runs")
    assert r.returncode == 2 and "the value is not valid YAML" in r.stderr and "Traceback" not in r.stderr


def test_odd_recipe_shapes_are_messages(tmp_path):
    for body, msg in (("name: t\nstages:\n  - {name: a, kind: [1]}\n", r"recipe.yaml:3: a stage's `name` and `kind`"),
                      ("name: [1]\nstages: []\n", r"recipe.yaml:1: `name` must be text"),
                      ("name: t\nseed: abc\nstages: []\n", r"recipe.yaml:2: `seed` must be an integer"),
                      ("name: t\noutput_dir: [1]\n", r"recipe.yaml:2: `output_dir` must be a folder path"),
                      ("name: t\nendpoints: {a: 5}\n", r"recipe.yaml:2: endpoint 'a': Input should be a valid dict"),
                      ("name: t\nstages: x\n", r"recipe.yaml:2: `stages` is a list of stages")):
        with pytest.raises(ConfigError, match=msg):
            load_recipe(_recipe(tmp_path, body))


def test_a_served_endpoint_is_fingerprinted_by_its_weights_and_their_answers_are_not_reused(tmp_path):
    """``local: {model: runs/.../model, serve: true}``: retraining that model must re-run the stages that call
    it (they were skipped: only the endpoint's YAML was fingerprinted) and must not answer from the answers
    the old weights gave (the cache key holds the model's name, which did not change)."""
    from hypnos.common.runner import _start_stage, stage_inputs

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"old weights")
    _rows(tmp_path / "items.jsonl", 2)
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""\
        name: t
        endpoints:
          local: {model: model, serve: true}
          other: {model: m2, base_url: "http://127.0.0.1:9/v1"}
        stages:
          - {name: crossfilter, input: items.jsonl, judges: [local, other]}
        """), encoding="utf-8")
    recipe = load_recipe(tmp_path / "r.yaml", output_dir=tmp_path / "runs")
    spec = recipe.stage("crossfilter")
    before = stage_inputs(recipe, spec)
    manifest = _start_stage(recipe, spec, force=False)
    out = recipe.stage_dir("crossfilter")
    manifest.update(status="done", outputs={}, timings={**manifest["timings"], "finished": "x"})
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (out / "llm_cache").mkdir()
    for f in ("local.sqlite", "local.sqlite-wal", "other.sqlite"):
        (out / "llm_cache" / f).write_bytes(b"answers")
    assert _start_stage(recipe, spec, force=False).get("skipped")  # unchanged: skipped
    time.sleep(0.01)
    (model / "model.safetensors").write_bytes(b"new weights")
    assert stage_inputs(recipe, spec) != before
    assert not _start_stage(recipe, spec, force=False).get("skipped")  # retrained: runs again
    assert sorted(p.name for p in (out / "llm_cache").iterdir()) == ["other.sqlite"]  # the old model's answers go
