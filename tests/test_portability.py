"""No file of the repository names a path on one particular machine (issue 15, finding 12).

Shared data is found as ``../shared/data`` next to the checkout or through ``$HYPNOS_DATA``
(``tests/conftest.py: shared_data``); temporary files go to ``tempfile``/``tmp_path``. An absolute path into a
workspace, a home or a temp folder written into a file works on one machine only.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# An absolute path into a home, a workspace, a mounted or scratch disk or a temp folder (tempfile or tmp_path instead: two
# users' runs don't collide); a word boundary or quote before it, so "../shared/data" and URLs don't count.
# The folder names are joined at import time, so this file spells no such path itself.
MACHINE_DIRS = ("work", "root", "home", "Users", "mnt", "scratch", "tmp")
MACHINE_PATH = re.compile(r"""(?:^|[\s"'`(=:,\[])(/(?:""" + "|".join(MACHINE_DIRS) + r""")/[\w.-]+|[A-Z]:\\Users\\)""")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".sh", ".jinja", ".html",
                 ".json", ".jsonl", ".csv", ".tsv", ""}


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


def _abs(*parts: str) -> str:
    """An absolute path built at run time, so this file itself names none."""
    return "/" + "/".join(parts)


def test_the_pattern_catches_machine_paths_and_nothing_else():
    assert machine_paths(f'DATA = "{_abs("work", "shared", "data", "x.jsonl")}"') == [_abs("work", "shared")]
    assert machine_paths(f"see {_abs('home', 'alice', 'data')} and {_abs('mnt', 'nfs', 'x')}") == [
        _abs("home", "alice"), _abs("mnt", "nfs")]
    assert machine_paths(f'out = "{_abs("tmp", "bench")}"') == [_abs("tmp", "bench")]
    win = "C:" + "\\Users\\"
    assert machine_paths(f'open("{win}bob\\x")') == [win]
    url, rel = "https://example.org" + _abs("home", "page"), "runs/t" + _abs("work", "x")
    assert machine_paths(f"../shared/data/tokenizers ; {url} ; {rel}") == []


def test_no_file_names_an_absolute_machine_path():
    hits = []
    for rel in _repo_files():
        p = ROOT / rel
        if p.suffix.lower() not in TEXT_SUFFIXES or p.stat().st_size > 2_000_000:
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
