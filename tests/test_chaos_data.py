"""Chaos suite, data side (issue 15): bad files and hard kills, through the real command line.

1. A corpus of bad files (one bad byte, GBK, BOM, U+2028/U+0085, a truncated line, NUL, wrong field types,
   an empty file, a row over the size limit, binary garbage, a CSV field over 128 KiB), built here at test
   time, goes through ``hypnos data check`` and two stages (``mix`` and ``decontaminate``, as
   ``hypnos run`` subprocesses). Invariants: no traceback anywhere; every row is accounted for
   (rows in = rows out + quarantined); decoded text is the original text (no mojibake).
2. ``generate`` + ``crossfilter`` against the fault-injecting server, SIGKILLed 5 times at random points
   (a random number of answered requests; the seed is printed on failure, ``HYPNOS_CHAOS_SEED`` replays
   it): the final outputs are byte-identical to an uninterrupted run and no request is answered twice.

Bounded: about 25 s on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

GOOD = [{"id": f"q{i}", "instruction": f"第{i}题：术后镇痛泵的常用药物有哪些？", "output": "舒芬太尼、氢吗啡酮等。"}
        for i in range(8)]
HUGE = 17 << 20  # over the default 16 MiB row limit


def _line(row: dict, encoding: str = "utf-8") -> bytes:
    return json.dumps(row, ensure_ascii=False).encode(encoding)


def _corpus(d: Path) -> dict[str, dict]:
    """Write the bad files; return name -> {"rows": records in it, "bad": how many are bad, "error": file-level}."""
    files: dict[str, tuple[bytes, int, int]] = {}
    lines = [_line(r) for r in GOOD[:6]]
    lines[2] = lines[2].replace("镇痛".encode(), b"\xe9\x95\xff")  # a broken UTF-8 sequence in row 3
    files["bad_byte.jsonl"] = (b"\n".join(lines) + b"\n", 6, 1)
    files["gbk.jsonl"] = (b"\r\n".join(_line(r, "gbk") for r in GOOD[:5]) + b"\r\n", 5, 0)
    files["bom.jsonl"] = (b"\xef\xbb\xbf" + b"\n".join(_line(r) for r in GOOD[:3]) + b"\n", 3, 0)
    seps = {**GOOD[0], "output": "第一段\u2028第二段\u0085第三段\u2029完"}
    files["u2028.jsonl"] = (b"\n".join([_line(seps), _line(GOOD[1]), b'{"id": "x",', _line(GOOD[2])]) + b"\n", 4, 1)
    files["truncated.jsonl"] = (b"\n".join(_line(r) for r in GOOD[:4]) + b"\n" + _line(GOOD[4])[:25], 5, 1)
    nul = _line(GOOD[1]).replace("镇痛".encode(), b"\x00")
    files["nul.jsonl"] = (b"\n".join([_line(GOOD[0]), nul, _line(GOOD[2])]) + b"\n", 3, 1)
    wrong = [GOOD[0], {"id": "w1", "instruction": 42}, {"id": "w2", "instruction": "问", "meta": "oops"},
             {"id": "w3", "instruction": "问", "output": ["列", "表"]}, GOOD[1]]
    files["wrong_types.jsonl"] = (b"\n".join(_line(r) for r in wrong) + b"\n", 5, 3)
    # no text field: mix takes any row, but data check and decontaminate reject it (decontaminate itself
    # raises for it, mid-stage: the runner quarantines the row and runs the stage again without it)
    files["no_text.jsonl"] = (b"\n".join([_line(GOOD[0]), b'{"id": "t1", "title": "only a title"}', _line(GOOD[1])])
                              + b"\n", 3, 1)
    # values Python's json reads but cannot write back as UTF-8 JSON: a lone surrogate, NaN
    files["bad_values.jsonl"] = (b"\n".join([_line(GOOD[0]), b'{"id": "s", "instruction": "x\\ud800y"}',
                                             b'{"id": "e", "instruction": "ok \\ud83d\\ude00"}',
                                             b'{"id": "n", "instruction": "q", "meta": {"x": NaN}}']) + b"\n", 4, 2)
    files["empty.jsonl"] = (b"", 0, 0)
    big = _line({"id": "big", "instruction": "大", "output": "麻" * (HUGE // 3)})
    files["huge_row.jsonl"] = (b"\n".join([_line(GOOD[0]), big, _line(GOOD[1])]) + b"\n", 3, 1)
    long_field = "麻醉" * 70_000  # 420 KB, over csv's default 128 KiB field limit
    csv_bytes = ("id,instruction,output\n" + f'c1,"{long_field}",答\n' + 'c2,"两行\n的问题",答\n').encode("gb18030")
    files["long_field.csv"] = (csv_bytes, 2, 0)
    files["garbage.jsonl"] = (random.Random(0).randbytes(64 << 10), 0, 0)
    out = {}
    for name, (data, rows, bad) in files.items():
        (d / name).write_bytes(data)
        out[name] = {"rows": rows, "bad": bad, "error": "binary data" if name == "garbage.jsonl" else None,
                     "bad_in_mix": 0 if name == "no_text.jsonl" else bad}
    return out


def _hypnos(*args, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYPNOS_NO_PROGRESS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "hypnos.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    d = tmp_path_factory.mktemp("chaos")
    return d, _corpus(d)


def test_data_check_accounts_for_every_row_without_a_traceback(corpus):
    d, files = corpus
    r = _hypnos("data", "check", "--quarantine", *(d / n for n in files))
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    assert r.returncode == 1  # some files have bad rows
    for name, f in files.items():
        path = d / name
        if f["error"]:
            assert f"{path}: {f['error']}" in out
            continue
        good = f["rows"] - f["bad"]
        assert f"{path}: {f['rows']} rows: {good} valid, {f['bad']} rejected" in out, (name, out[-3000:])
        q = d / f"{name}.quarantine.jsonl"
        assert (len(q.read_text(encoding="utf-8").splitlines()) if q.exists() else 0) == f["bad"], name
    assert f"{d / 'empty.jsonl'}: no rows" in out
    # the bad row is reported at its own line, with its bytes kept in the quarantine file
    assert f"{d / 'bad_byte.jsonl'}:3: not valid UTF-8" in out and f"{d / 'u2028.jsonl'}:3: invalid JSON" in out
    q = json.loads((d / "bad_byte.jsonl.quarantine.jsonl").read_text(encoding="utf-8"))
    assert b"\xe9\x95\xff" in __import__("base64").b64decode(q["raw_b64"])
    assert f"{d / 'huge_row.jsonl'}:2: row is {len(_line({'id': 'big', 'instruction': '大', 'output': '麻' * (HUGE // 3)})):,} bytes" in out


STAGES = """\
  - {{name: mix_{key}, kind: mix, on_error: quarantine, sources: [{{path: {name}}}]}}
  - {{name: decon_{key}, kind: decontaminate, on_error: quarantine, input: {name}, benchmarks: [bench.jsonl], ngram: 6}}
"""


def test_two_stages_account_for_every_row_without_a_traceback(corpus):
    d, files = corpus
    (d / "bench.jsonl").write_text(json.dumps({"id": "b1", "question": "术后镇痛泵的常用药物有哪些？",
                                               "options": {"A": "舒芬太尼", "B": "氧气"}, "answer": "A"},
                                              ensure_ascii=False) + "\n", encoding="utf-8")
    names = [n for n, f in files.items() if not f["error"]]
    body = "".join(STAGES.format(key=n.replace(".", "_"), name=n) for n in names)
    (d / "recipe.yaml").write_text("name: chaos\nstages:\n" + body, encoding="utf-8")
    r = _hypnos("run", d / "recipe.yaml", "--output-dir", d / "runs")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out, out[-3000:]
    for name in names:
        f, key = files[name], name.replace(".", "_")
        for stage, out_names in (("mix", ("train",)), ("decon", ("kept", "dropped"))):
            sd = d / "runs/chaos" / f"{stage}_{key}"
            m = json.loads((sd / "manifest.json").read_text(encoding="utf-8"))
            rows_out = sum(len((sd / m["outputs"][o]).read_text(encoding="utf-8").split("\n")) - 1 for o in out_names)
            q = m.get("quarantined", {}).get(str(d / name), {"rows": 0})
            bad = f["bad_in_mix"] if stage == "mix" else f["bad"]
            assert (rows_out, q["rows"]) == (f["rows"] - bad, bad), (stage, name, m)
            if q["rows"]:
                assert len((sd / q["file"]).read_text(encoding="utf-8").splitlines()) == bad
        if name == "empty.jsonl":
            assert any("no rows (empty input)" in w for w in m["warnings"]) and "no rows (empty input)" in out
    # decoded as what was written, whatever the encoding: no mojibake reaches the training mix
    train = [json.loads(x) for x in (d / "runs/chaos/mix_gbk_jsonl/train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["instruction"] for r in train) == sorted(r["instruction"] for r in GOOD[:5])
    train = (d / "runs/chaos/mix_u2028_jsonl/train.jsonl").read_text(encoding="utf-8")
    assert "第一段\u2028第二段\u0085第三段\u2029完" in train
    train = [json.loads(x) for x in (d / "runs/chaos/mix_long_field_csv/train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(len(r["instruction"]) for r in train) == [len("两行\n的问题"), 140_000]


def test_file_level_and_row_errors_are_one_line_messages(corpus):
    d, _ = corpus
    cfg = d / "mix_garbage.yaml"
    cfg.write_text("sources: [{path: garbage.jsonl}]\non_error: quarantine\n", encoding="utf-8")
    r = _hypnos("mix", "--config", cfg, "--output-dir", d / "runs1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{d / 'garbage.jsonl'}: binary data" in r.stderr
    cfg = d / "mix_bad.yaml"
    cfg.write_text("sources: [{path: bad_byte.jsonl}]\n", encoding="utf-8")  # on_error: raise (the default)
    r = _hypnos("mix", "--config", cfg, "--output-dir", d / "runs2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{d / 'bad_byte.jsonl'}:3: not valid UTF-8 text" in r.stderr
    # a declared encoding is used as declared: wrong -> every non-ASCII line is a bad row, never a guess
    r = _hypnos("data", "check", "--encoding", "utf-8", "--kind", "qa", d / "long_field.csv")
    assert r.returncode == 1 and f"{d / 'long_field.csv'}:2: not valid UTF-8 text" in r.stdout
    r = _hypnos("data", "check", "--encoding", "gb18030", "--kind", "qa", d / "long_field.csv")
    assert r.returncode == 0 and "2 rows: 2 valid, 0 rejected" in r.stdout


# ---- hard kills of generate + crossfilter ----------------------------------------------------------------
class Gate:
    """Wraps a responder of the fault-injecting server: counts every answer by request, and can hold new
    answers back while a client is killed, so that "answered" means "answered to a client that got it".

    ``close()`` holds every answer not yet under way; ``drain()`` waits until the answers already under way
    have been sent (and, 1 s later, stored by the client); after the kill, ``reopen()`` fails the held
    requests (their client is dead) and lets the next client's requests through.
    """

    def __init__(self, responder):
        self.responder = responder
        self.cond = threading.Condition()
        self.closed, self.epoch, self.under_way, self.total = False, 0, 0, 0
        self.answered: dict[str, int] = {}
        self.generation_requests = 0

    def __call__(self, body: dict):
        with self.cond:
            epoch = self.epoch
            while self.closed:
                self.cond.wait()
            if self.epoch != epoch:
                raise ConnectionAbortedError("held for a client that was killed: never answered")
            self.under_way += 1
        try:
            answer = self.responder(body)
        finally:
            with self.cond:
                self.under_way -= 1
        key = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        with self.cond:
            self.answered[key] = self.answered.get(key, 0) + 1
            self.total += 1
            self.generation_requests += "编写" in body["messages"][-1]["content"]
            self.cond.notify_all()
        return answer

    def close(self) -> None:
        with self.cond:
            self.closed = True

    def drain(self) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.under_way == 0, timeout=30)
        time.sleep(1.0)  # the last answers reach the client and its cache (generous: CI machines are busy)

    def reopen(self) -> None:
        with self.cond:
            self.closed = False
            self.epoch += 1
            self.cond.notify_all()

    def reset(self) -> None:
        with self.cond:
            self.answered.clear()
            self.total = self.generation_requests = 0


def _start(recipe: Path, out: Path) -> subprocess.Popen:
    code = ("import sys; from hypnos.common.runner import load_recipe, run_recipe; "
            "run_recipe(load_recipe(sys.argv[1], output_dir=sys.argv[2]))")
    return subprocess.Popen([sys.executable, "-c", code, str(recipe), str(out)],
                            env={**os.environ, "HYPNOS_NO_PROGRESS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _kill_at(gate: Gate, proc: subprocess.Popen, answered: int, runs: Path) -> str:
    """SIGKILL the run once ``answered`` answers have been given in all; return the stage it was in."""
    deadline = time.time() + 60
    while gate.total < answered:
        assert proc.poll() is None, f"the run ended before {answered} answers:\n{proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, "the run never got far enough to be killed"
        time.sleep(0.005)
    gate.close()
    gate.drain()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    # Requests the dead client sent just before the kill may still be on their way to the gate (the server
    # delays every answer): let them reach it and be held, so that reopening fails them as never answered.
    time.sleep(0.3)
    gate.reopen()
    m = runs / "gen/crossfilter/manifest.json"
    return "crossfilter" if m.exists() else "generate"


OUTPUTS = ("generate/generated.jsonl", "generate/failed.jsonl", "crossfilter/kept.jsonl", "crossfilter/dropped.jsonl")


INJECTED = {"answers": 0}


def _with_line_separators(responder):
    """Answers with U+2028 and U+0085 inside (LLMs write them): caches and outputs must keep them whole."""

    def respond(body: dict):
        answer = responder(body)
        if isinstance(answer, str) and "。" in answer:
            INJECTED["answers"] += 1
            return answer.replace("。", "。\u2028", 1).replace("。", "。\u0085", 2)
        return answer

    return respond


def test_sigkill_5_times_gives_the_same_bytes_and_answers_nothing_twice(tmp_path):
    from faulty_server import Faults, FaultyServer
    from test_generate import _setup, responder

    seed = int(os.environ.get("HYPNOS_CHAOS_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    gate = Gate(_with_line_separators(responder))
    with FaultyServer(Faults(delay_s=0.02, rate_500=0.1, seed=5), responder=gate) as server:
        recipe = _setup(tmp_path, server.base_url, target=8)
        seeds = tmp_path / "seeds.jsonl"  # seed answers with line separators inside, as real data has
        seeds.write_text(seeds.read_text(encoding="utf-8").replace("，", "，\u2028", 1).replace("。", "。\u0085"),
                         encoding="utf-8")
        clean = _start(recipe, tmp_path / "clean")
        assert clean.wait(timeout=120) == 0, clean.stderr.read().decode()[-2000:]
        clean.stderr.close()
        n_total, n_gen = gate.total, gate.generation_requests
        assert max(gate.answered.values()) == 1 and n_gen >= 4 and n_total - n_gen >= 4

        server.reset()
        gate.reset()
        # 5 random points, at least 2 in each stage
        points = sorted({*rng.sample(range(1, n_gen), 2), *rng.sample(range(n_gen + 1, n_total), 2),
                         rng.randrange(1, n_total)})
        runs, stages = tmp_path / "runs", []
        for p in points:
            stages.append(_kill_at(gate, _start(recipe, runs), p, runs))
        last = _start(recipe, runs)
        assert last.wait(timeout=120) == 0, last.stderr.read().decode()[-2000:]
        last.stderr.close()

    why = f"seed {seed} (HYPNOS_CHAOS_SEED replays it), killed at answers {points} in {stages}"
    repeated = {k: n for k, n in gate.answered.items() if n > 1}
    assert not repeated, f"{len(repeated)} requests answered twice; {why}"
    assert len(points) >= 4 and {"generate", "crossfilter"} <= set(stages), why
    assert gate.total == n_total, why  # not one answer more than the uninterrupted run needed
    outputs = "".join((runs / "gen" / name).read_text(encoding="utf-8") for name in OUTPUTS)
    assert INJECTED["answers"] == 0 or "\u2028" in outputs or "\u0085" in outputs
    for name in OUTPUTS:
        assert (runs / "gen" / name).read_bytes() == (tmp_path / "clean/gen" / name).read_bytes(), (name, why)
    m = json.loads((runs / "gen/crossfilter/manifest.json").read_text(encoding="utf-8"))
    assert m["status"] == "done"
