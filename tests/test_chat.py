"""`hypnos chat`: local in-process streaming and streaming from a real endpoint on loopback."""

import subprocess
import sys


def _chat(args, text):
    return subprocess.run([sys.executable, "-m", "hypnos.cli", "chat", *args], input=text, capture_output=True,
                          text=True, timeout=300, check=False)


def test_local_chat_answers_each_message_and_keeps_history(tiny_model_dir):
    r = _chat([str(tiny_model_dir), "--max-new-tokens", "6"], "你好\n\n/reset\n麻醉前禁食多久？\n/exit\n忽略\n")
    assert r.returncode == 0, r.stderr
    answers = [x for x in r.stdout.splitlines() if x.startswith("助手: ")]
    assert len(answers) == 2 and all(len(a) > len("助手: ") for a in answers)  # /exit stops before "忽略"
    assert "不能替代执业医师" in r.stderr


def test_chat_streams_from_an_openai_compatible_endpoint(tiny_model_dir, serve_model):
    with serve_model(tiny_model_dir, name="tiny") as url:
        r = _chat(["tiny", "--base-url", url, "--max-new-tokens", "5"], "术后镇痛有哪些方法？\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("助手: ") and len(r.stdout.strip()) > len("助手:")


def test_ctrl_c_mid_answer_exits_cleanly(tiny_model_dir):
    """SIGINT while an answer streams stops it and leaves cleanly (it used to abort: exit 134,
    "terminate called without an active exception", from the generation thread killed mid-op)."""
    import os
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "hypnos.cli", "chat", str(tiny_model_dir), "--max-new-tokens",
                             "900"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc.stdin.write("术后镇痛有哪些方法？\n".encode())
    proc.stdin.flush()
    seen, deadline = b"", time.monotonic() + 120
    while seen.count(b" ") < 5 and time.monotonic() < deadline:  # a few words of the answer are out
        seen += os.read(proc.stdout.fileno(), 64)
    assert "助手: ".encode() in seen
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    _, err = proc.communicate(input=b"", timeout=60)  # then end of input
    assert proc.returncode in (0, 130), err.decode()
    assert b"terminate called" not in err and b"Traceback" not in err, err.decode()
