"""No file of the repository names a path on one particular machine (issue 15, finding 12).

Shared data is found as ``../shared/data`` next to the checkout or through ``$HYPNOS_DATA``
(``tests/conftest.py: shared_data``); temporary files go to ``tempfile``/``tmp_path``. A path such as
``/work/...`` or ``/home/<user>/...`` written into a file works on one machine only.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# An absolute path into a home, a workspace or a mounted/scratch folder; a word boundary or quote before it,
# so "../shared/data" and URLs ("https://host/home/x") don't count. /tmp exists on every Unix machine and is
# not flagged (tempfile is still better: two users' runs don't collide).
MACHINE_PATH = re.compile(r"""(?:^|[\s"'`(=:,\[])(/(?:work|root|home|Users|mnt|scratch)/[\w.-]+|[A-Z]:\\Users\\)""")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".sh", ".jinja", ".html",
                 ".json", ".jsonl", ".csv", ".tsv", ""}
# Files that must talk about such paths: this test, and docs saying what not to write.
ALLOWED = {"tests/test_portability.py"}


def _repo_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot list the repository's files")
    return [f for f in out if f and (ROOT / f).is_file()]


def machine_paths(text: str) -> list[str]:
    """The machine-specific absolute paths written in a text."""
    return [m.group(1) for m in MACHINE_PATH.finditer(text)]


def test_the_pattern_catches_machine_paths_and_nothing_else():
    assert machine_paths('DATA = "/work/shared/data/x.jsonl"') == ["/work/shared"]
    assert machine_paths("see /home/alice/data and /mnt/nfs/x") == ["/home/alice", "/mnt/nfs"]
    assert machine_paths(r'open("C:\Users\bob\x")') == ["C:\\Users\\"]
    assert machine_paths("../shared/data/tokenizers ; https://example.org/home/page ; runs/t/work/x") == []


def test_no_file_names_an_absolute_machine_path():
    hits = []
    for rel in _repo_files():
        p = ROOT / rel
        if rel in ALLOWED or p.suffix.lower() not in TEXT_SUFFIXES or p.stat().st_size > 2_000_000:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for i, line in enumerate(text.split("\n"), 1):
            hits += [f"{rel}:{i}: {path}" for path in machine_paths(line)]
    assert not hits, "absolute machine paths (use ../shared/data, $HYPNOS_DATA or tmp_path):\n" + "\n".join(hits)


def test_shared_data_is_found_relative_to_the_checkout_or_through_the_env():
    import os

    import conftest

    assert conftest.SHARED_DATA == Path(os.environ.get("HYPNOS_DATA") or ROOT.parent / "shared" / "data")
    with pytest.raises(pytest.skip.Exception, match="not found under .*HYPNOS_DATA"):
        conftest.shared_data("no", "such", "file")
