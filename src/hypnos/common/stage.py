"""What every recipe stage shares: its typed config base, the context it runs in, and its result.

A stage is a module with a ``Config`` (a ``StageConfig``) and ``run(cfg, ctx) -> StageResult``.
The runner (``hypnos.common.runner``) gives each stage its own output folder, resolves references
to earlier stages (``"@stage"`` or ``"@stage.output"``), and writes ``manifest.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from hypnos.common.runner import Recipe

log = logging.getLogger("hypnos")


class ConfigError(ValueError):
    """A recipe or stage config problem, found before any model loads."""


class StageConfig(BaseModel):
    """Base of every stage's typed config: unknown keys are errors, fields are documented."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    on_error: Literal["raise", "quarantine"] = "raise"
    """Bad input rows: stop at the first with ``file:line: reason`` (default), or write each to
    ``<stage>/quarantine/<file>.quarantine.jsonl`` (with its raw bytes), count it and go on."""
    encoding: str | None = None
    """Text encoding of the stage's input files (e.g. ``gb18030``); detected per file when left out."""

    def check(self, ctx: StageContext) -> list[str]:
        """Cross-field and file checks run by ``hypnos validate`` before any model loads.

        Returns a list of problems (empty when fine). Stages override this; use ``ctx.check_ref``.
        """
        return []

    def input_files(self, ctx: StageContext) -> list[Path]:
        """Files the stage reads that its config does not name (e.g. an eval task's data file).

        The runner fingerprints them with the config's own paths, so editing one re-runs the stage.
        """
        return []


def is_ref(value: Any) -> bool:
    """True for a reference to an earlier stage's output, e.g. ``"@sft_general"``."""
    return isinstance(value, str) and value.startswith("@")


@dataclass
class StageResult:
    """What a stage reports back; the runner writes it into the manifest.

    Attributes:
        outputs: output name -> path relative to the stage folder. The first is the primary one,
            which ``"@stage"`` refers to; ``"@stage.name"`` picks another.
        counts: e.g. ``{"in": 120, "kept": 70, "dropped": 50}``.
        dropped: why rows were dropped, reason -> count (must add up to ``counts["dropped"]``).
        metrics: anything measured (losses, accuracies, tokens/s).
        usage: LLM token usage and cost, if the stage called an LLM.
    """

    outputs: dict[str, str]
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Where a stage runs: its folder, the recipe, and how to reach inputs and LLM endpoints."""

    name: str
    kind: str
    out_dir: Path
    run_dir: Path
    recipe: Recipe
    seed: int = 0
    inputs: dict[str, str] = field(default_factory=dict)  # filled as refs are resolved (for the manifest)
    _clients: dict[str, Any] = field(default_factory=dict)

    # ---- inputs -------------------------------------------------------------------------------
    def resolve(self, ref: str) -> Path:
        """A path or model reference as a local path.

        ``"@stage"`` / ``"@stage.output"`` -> that stage's output; a relative path -> relative to
        the recipe file's folder; anything else (a built-in model name, a hub id) is returned as is.
        """
        from hypnos.common.runner import resolve_ref

        path = resolve_ref(self.recipe, ref, self.run_dir)
        self.inputs[ref] = str(path)
        return path

    def resolve_model(self, ref: str) -> str:
        """A model reference: a stage output dir, a local dir, or a built-in/hub name (unchanged)."""
        if is_ref(ref):
            return str(self.resolve(ref))
        p = self.recipe.base_dir / ref
        return str(p) if p.exists() else ref

    def check_ref(self, ref: str | None, what: str) -> list[str]:
        """Problems with a path reference, for ``StageConfig.check``."""
        from hypnos.common.runner import check_ref

        return check_ref(self.recipe, self.name, ref, what)

    # ---- LLM endpoints ------------------------------------------------------------------------
    def client(self, endpoint: str):
        """The async LLM client for a named recipe endpoint, caching every answer in this stage's folder.

        The cache makes a killed stage resume without re-sending (and re-paying for) answered requests.
        """
        from hypnos.common.dist import is_main

        if not is_main():  # the one rule (common/dist.py): API calls and caches belong to the main process
            raise RuntimeError(f"stage {self.name!r} asked for endpoint {endpoint!r} on a non-main process; "
                               "wrap the API step in hypnos.common.dist.run_on_main")
        if endpoint not in self._clients:
            from hypnos.common.runner import endpoint_for
            from hypnos.data.clients import LLMClient

            ep = endpoint_for(self.recipe, endpoint)
            self._clients[endpoint] = LLMClient(ep, cache_path=self.out_dir / "llm_cache" / f"{endpoint}.jsonl")
        return self._clients[endpoint]

    def usage(self) -> dict[str, Any]:
        """Token usage per endpoint of all clients this stage used."""
        return {name: c.usage_dict() for name, c in self._clients.items()}
