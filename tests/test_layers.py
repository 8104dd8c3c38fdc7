"""Imports go one way (STYLE.md): serve, eval > train > tokenizer, data > common.

Checked on module-level imports. Function-level imports are how the runner loads stages and clients
on demand (the plug-in direction), so they are not counted.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "hypnos"
RANK = {"common": 0, "data": 1, "tokenizer": 1, "train": 2, "eval": 3, "serve": 3}


def _module_level_imports(path: Path):
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hypnos."):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("hypnos."))


def test_imports_point_down_the_pipeline():
    bad = []
    for f in SRC.rglob("*.py"):
        layer = f.relative_to(SRC).parts[0]
        if layer not in RANK:
            continue  # cli.py, stages.py: the top, allowed to see everything
        for mod in _module_level_imports(f):
            target = mod.split(".")[1]
            if target in RANK and RANK[target] > RANK[layer]:
                bad.append(f"{f.relative_to(SRC)} imports {mod}")
            if target in RANK and RANK[target] == RANK[layer] and target != layer:
                bad.append(f"{f.relative_to(SRC)} imports sibling layer {mod}")
    assert not bad, "\n".join(bad)
