"""The recipe runner: ``hypnos validate RECIPE`` and ``hypnos run RECIPE [--from S] [--only S]``.

A recipe is one YAML file: a name, LLM endpoints, and a list of stages. Each stage runs into
``<output_dir>/<recipe name>/<stage name>/`` and writes ``manifest.json`` there (resolved config,
input fingerprints, library versions, counts kept/dropped with reasons, timings). A stage whose
config and inputs are unchanged since it last finished is skipped; a stage killed midway starts
again in the same folder, where it finds what it already did (LLM answers, training checkpoints).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hypnos.common.stage import ConfigError, StageContext, StageResult, is_ref, log
from hypnos.stages import STAGES, load_stage

KEEP_ON_CONFIG_CHANGE = ("llm_cache",)  # answers keyed by request hash stay valid whatever changed
VERSIONED = ("hypnos", "torch", "transformers", "tokenizers", "peft", "trl", "accelerate", "datasets",
             "openai", "sentencepiece")


class EndpointSpec(BaseModel):
    """An OpenAI-compatible LLM endpoint the recipe's stages call by name."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str
    """Model name sent in requests; with ``serve: true``, the model reference Hypnos serves itself."""
    base_url: str | None = None
    """e.g. https://api.openai.com/v1 ; left out with ``serve: true``."""
    serve: bool = False
    """Start ``hypnos serve <model>`` on loopback for this run (no network or key needed)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself never enters a file)."""
    max_concurrency: int = Field(4, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)


class StageSpec(BaseModel):
    """One entry of ``stages:``: its name (= output folder), kind and typed config."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    kind: str
    config: Any  # the kind's StageConfig
    raw: dict = Field(default_factory=dict)


class Recipe(BaseModel):
    """A parsed, typed recipe."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    path: Path
    base_dir: Path
    output_dir: Path
    seed: int = 0
    endpoints: dict[str, EndpointSpec] = Field(default_factory=dict)
    stages: list[StageSpec] = Field(default_factory=list)
    description: str = ""

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"{self.path}: no stage named {name!r} (stages: {', '.join(s.name for s in self.stages)})")

    def stage_dir(self, name: str) -> Path:
        """Where stage ``name`` writes its outputs."""
        return self.output_dir / self.name / name


# ---- loading ----------------------------------------------------------------------------------

def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Line number (1-based) of every mapping key / sequence item in a composed YAML tree."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = prefix + (k.value,)
            out[path] = k.start_mark.line + 1
            out.update(_key_lines(v, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[prefix + (i,)] = v.start_mark.line + 1
            out.update(_key_lines(v, prefix + (i,)))
    return out


def _where(path: Path, lines: dict[tuple, int], loc: tuple) -> str:
    while loc and loc not in lines:
        loc = loc[:-1]
    return f"{path}:{lines[loc]}" if loc in lines else str(path)


def _config_error(path: Path, lines: dict, loc: tuple, stage: str, err: ValidationError) -> ConfigError:
    msgs = []
    for e in err.errors():
        key_loc = loc + tuple(e["loc"])
        key = ".".join(str(x) for x in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        msgs.append(f"{_where(path, lines, key_loc)}: stage {stage!r}: {key}: {msg}")
    return ConfigError("\n".join(msgs))


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """``stage.key=value`` strings (value parsed as YAML) for ``hypnos run ... sft.max_steps=2``."""
    out = []
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not KEY=VALUE (e.g. sft_general.max_steps=2)")
        k, v = o.split("=", 1)
        out.append((k.split("."), yaml.safe_load(v)))
    return out


def load_recipe(path: str | Path, overrides: list[str] | None = None, output_dir: str | Path | None = None) -> Recipe:
    """Parse and type-check a recipe YAML; every problem names the file and line.

    Args:
        path: the recipe file.
        overrides: ``stage.key=value`` (or ``seed=1``) overrides, applied after the YAML.
        output_dir: where runs go (default: the recipe's ``output_dir``, else ``runs``).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: recipe file not found")
    text = _expand_env(path, path.read_text(encoding="utf-8"))
    try:
        tree = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    lines = _key_lines(tree) if tree is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with name, endpoints and stages")
    for keys, value in parse_overrides(overrides or []):
        _apply_override(path, data, keys, value)

    allowed = {"name", "description", "seed", "output_dir", "endpoints", "stages"}
    for k in data:
        if k not in allowed:
            raise ConfigError(f"{_where(path, lines, (k,))}: unknown top-level key {k!r} (allowed: {sorted(allowed)})")
    if "name" not in data:
        raise ConfigError(f"{path}: the recipe needs a `name` (its runs go to runs/<name>/)")

    endpoints = {}
    for name, spec in (data.get("endpoints") or {}).items():
        try:
            endpoints[name] = EndpointSpec.model_validate(spec)
        except ValidationError as e:
            raise _config_error(path, lines, ("endpoints", name), f"endpoint {name}", e) from None

    stages, seen = [], set()
    for i, entry in enumerate(data.get("stages") or []):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{_where(path, lines, ('stages', i))}: each stage needs a `name`")
        entry = dict(entry)
        name = entry.pop("name")
        kind = entry.pop("kind", name)
        if name in seen:
            raise ConfigError(f"{_where(path, lines, ('stages', i))}: duplicate stage name {name!r}")
        seen.add(name)
        if kind not in STAGES:
            raise ConfigError(f"{_where(path, lines, ('stages', i))}: stage {name!r}: unknown kind {kind!r} "
                              f"(known: {', '.join(STAGES)})")
        cfg_cls = load_stage(kind).Config
        try:
            cfg = cfg_cls.model_validate(entry)
        except ValidationError as e:
            raise _config_error(path, lines, ("stages", i), name, e) from None
        stages.append(StageSpec(name=name, kind=kind, config=cfg, raw=entry))

    out = Path(output_dir or data.get("output_dir") or "runs")
    return Recipe(name=str(data["name"]), path=path, base_dir=path.parent.resolve(), output_dir=out,
                  seed=int(data.get("seed", 0)), endpoints=endpoints, stages=stages,
                  description=str(data.get("description", "")))


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _expand_env(path: Path, text: str) -> str:
    """``${VAR}`` / ``${VAR:-default}`` in a recipe: data locations and hosts differ per machine."""
    out = []
    for i, line in enumerate(text.splitlines(keepends=True), 1):
        if line.lstrip().startswith("#"):
            out.append(line)
            continue

        def sub(m: re.Match, i: int = i) -> str:
            if m.group(1) in os.environ:
                return os.environ[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            raise ConfigError(f"{path}:{i}: environment variable {m.group(1)} is not set (and has no :-default)")

        out.append(_ENV.sub(sub, line))
    return "".join(out)


def _apply_override(path: Path, data: dict, keys: list[str], value: Any) -> None:
    if keys[0] in ("seed", "name", "output_dir"):
        data[keys[0]] = value
        return
    for entry in data.get("stages") or []:
        if entry.get("name") == keys[0]:
            target = entry
            for k in keys[1:-1]:
                target = target.setdefault(k, {})
            target[keys[-1]] = value
            return
    raise ConfigError(f"{path}: override {'.'.join(keys)}: no stage named {keys[0]!r}")


# ---- references -------------------------------------------------------------------------------

def _split_ref(ref: str) -> tuple[str, str | None]:
    body = ref[1:]
    stage, _, output = body.partition(".")
    return stage, (output or None)


def resolve_ref(recipe: Recipe, ref: str, run_dir: Path | None = None) -> Path:
    """``"@stage[.output]"`` -> the output path from that stage's manifest; other paths are recipe-relative."""
    if not is_ref(ref):
        p = Path(ref)
        return p if p.is_absolute() else (recipe.base_dir / p)
    stage, output = _split_ref(ref)
    manifest = read_manifest(recipe.stage_dir(stage))
    if not manifest or manifest.get("status") != "done":
        raise ConfigError(f"{ref}: stage {stage!r} has not finished; run it first (hypnos run {recipe.path})")
    outputs = manifest["outputs"]
    if output is None:
        output = next(iter(outputs))
    if output not in outputs:
        raise ConfigError(f"{ref}: stage {stage!r} has no output {output!r} (it has: {', '.join(outputs)})")
    return recipe.stage_dir(stage) / outputs[output]


def check_ref(recipe: Recipe, current: str, ref: str | None, what: str) -> list[str]:
    """Problems with a reference used by stage ``current`` (validation time: nothing has run yet)."""
    if ref is None:
        return []
    if is_ref(ref):
        stage, _ = _split_ref(ref)
        names = [s.name for s in recipe.stages]
        if stage not in names:
            return [f"stage {current!r}: {what} {ref!r} names no stage of this recipe"]
        if names.index(stage) >= names.index(current):
            return [f"stage {current!r}: {what} {ref!r} refers to a later stage"]
        return []
    p = resolve_ref(recipe, ref)
    return [] if p.exists() else [f"stage {current!r}: {what} {ref!r}: file not found ({p})"]


def endpoint_for(recipe: Recipe, name: str):
    """The client-side ``Endpoint`` for a recipe endpoint, starting a local server if it says ``serve``."""
    from hypnos.data.clients import Endpoint

    if name not in recipe.endpoints:
        raise ConfigError(f"{recipe.path}: no endpoint named {name!r} (endpoints: {', '.join(recipe.endpoints)})")
    spec = recipe.endpoints[name]
    base_url = spec.base_url
    if spec.serve:
        base_url = _local_server(recipe, spec.model)
    return Endpoint(base_url=base_url, model=spec.model, api_key_env=spec.api_key_env,
                    max_concurrency=spec.max_concurrency, timeout_s=spec.timeout_s, max_retries=spec.max_retries)


_SERVERS: dict[str, tuple[Any, str]] = {}


def _local_server(recipe: Recipe, model: str) -> str:
    """Start (once per run) ``hypnos serve MODEL`` on a free loopback port; return its base URL."""
    if model in _SERVERS:
        return _SERVERS[model][1]
    import socket
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ref = str(resolve_ref(recipe, model)) if is_ref(model) else model
    log_path = recipe.output_dir / recipe.name / "servers.log"
    with log_path.open("a") as logf:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "hypnos.cli", "serve", ref, "--name", model,
                                 "--host", "127.0.0.1", "--port", str(port)], stdout=logf, stderr=logf,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 600
    log.info("starting local server for %s on %s", model, url)
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hypnos serve {model} exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                _SERVERS[model] = (proc, url)
                return url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"hypnos serve {model} did not come up in 10 minutes; see {log_path}")


def _die_with_parent() -> None:
    """In the server child: get SIGTERM when the runner dies, even by SIGKILL (no orphaned servers)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def stop_servers() -> None:
    """Stop every local server this process started."""
    for proc, _ in _SERVERS.values():
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    _SERVERS.clear()


# ---- validation -------------------------------------------------------------------------------

def validate_recipe(recipe: Recipe) -> list[str]:
    """Everything checkable before a model loads: refs, files, endpoints, models, output dir."""
    problems: list[str] = []
    run_dir = recipe.output_dir / recipe.name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_test{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        problems.append(f"output dir {run_dir} is not writable: {e}")
    for name, ep in recipe.endpoints.items():
        if not ep.serve and not ep.base_url:
            problems.append(f"endpoint {name!r}: needs base_url, or serve: true to serve {ep.model!r} locally")
        if ep.serve:
            problems += check_model_ref(recipe, ep.model, f"endpoint {name!r}")
        if ep.api_key_env and ep.api_key_env not in os.environ:
            problems.append(f"endpoint {name!r}: environment variable {ep.api_key_env} (its API key) is not set")
    for s in recipe.stages:
        ctx = StageContext(name=s.name, kind=s.kind, out_dir=recipe.stage_dir(s.name), run_dir=run_dir, recipe=recipe)
        try:
            problems += s.config.check(ctx)
        except ConfigError as e:
            problems.append(str(e))
    return problems


def check_model_ref(recipe: Recipe, ref: str, what: str) -> list[str]:
    """Problems with a model reference: a stage output, a local checkpoint dir, a built-in or a hub id."""
    if is_ref(ref):
        return []
    if (recipe.base_dir / ref).exists() or Path(ref).exists():
        return []
    from hypnos.common.models import BUILTIN_MODELS

    if ref in BUILTIN_MODELS:
        return []
    if ref.count("/") == 1 and os.environ.get("HF_HUB_OFFLINE") != "1":
        return []  # a hub id; fetched on first use by users with network
    return [f"{what}: model {ref!r} is not a local dir, a built-in ({', '.join(BUILTIN_MODELS)}) or a hub id"]


# ---- running ----------------------------------------------------------------------------------

def read_manifest(stage_dir: Path) -> dict | None:
    """A stage folder's manifest, or None."""
    p = stage_dir / "manifest.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


def _write_manifest(stage_dir: Path, manifest: dict) -> None:
    tmp = stage_dir / f"manifest.json.tmp{os.getpid()}"  # under accelerate/torchrun every rank writes it
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, stage_dir / "manifest.json")


_FP_CACHE: dict[tuple, str] = {}


def _fingerprint_file(p: Path) -> str:
    from hypnos.common.io import fingerprint_path

    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _FP_CACHE:
        _FP_CACHE[key] = fingerprint_path(p)
    return _FP_CACHE[key]


def _walk_strings(obj: Any):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk_strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk_strings(v)


def stage_inputs(recipe: Recipe, spec: StageSpec) -> dict[str, str]:
    """Fingerprints of everything a stage reads: upstream stages, input files, endpoints it names."""
    cfg = spec.config.model_dump(mode="json")
    inputs: dict[str, str] = {}
    for s in _walk_strings(cfg):
        if is_ref(s):
            stage, _ = _split_ref(s)
            m = read_manifest(recipe.stage_dir(stage)) or {}
            inputs[s] = m.get("fingerprint", "missing")
        elif s in recipe.endpoints:
            inputs[f"endpoint:{s}"] = hashlib.sha256(recipe.endpoints[s].model_dump_json().encode()).hexdigest()
        elif s and len(s) < 4096:
            p = resolve_ref(recipe, s)
            try:
                if p.exists() and p.resolve() != recipe.base_dir:
                    inputs[s] = _fingerprint_file(p)
            except OSError:
                pass
    ctx = StageContext(name=spec.name, kind=spec.kind, out_dir=recipe.stage_dir(spec.name),
                       run_dir=recipe.output_dir / recipe.name, recipe=recipe)
    for f in spec.config.input_files(ctx):
        if Path(f).exists():
            inputs[f"file:{f}"] = _fingerprint_file(Path(f))
    return inputs


def _fingerprint(spec: StageSpec, inputs: dict[str, str], seed: int) -> str:
    blob = json.dumps({"kind": spec.kind, "config": spec.config.model_dump(mode="json"), "inputs": inputs,
                       "seed": seed}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers."""
    out = {"python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _select(recipe: Recipe, from_stage: str | None, only: list[str] | None) -> list[StageSpec]:
    names = [s.name for s in recipe.stages]
    for n in [from_stage, *(only or [])]:
        if n is not None and n not in names:
            raise ConfigError(f"{recipe.path}: no stage named {n!r} (stages: {', '.join(names)})")
    if only:
        return [s for s in recipe.stages if s.name in only]
    if from_stage:
        return recipe.stages[names.index(from_stage):]
    return list(recipe.stages)


def run_stage(recipe: Recipe, spec: StageSpec, force: bool = False) -> dict:
    """Run one stage (or skip it when its config and inputs are unchanged); return its manifest."""
    out_dir = recipe.stage_dir(spec.name)
    inputs = stage_inputs(recipe, spec)
    fp = _fingerprint(spec, inputs, recipe.seed)
    old = read_manifest(out_dir)
    if (not force and old and old.get("status") == "done" and old.get("fingerprint") == fp
            and all((out_dir / p).exists() for p in old["outputs"].values())):
        log.info("[skip] %s: unchanged since %s", spec.name, old["timings"]["finished"])
        old["skipped"] = True
        return old
    if old and (force or old.get("fingerprint") != fp) and out_dir.exists():
        # A different config or input: earlier partial work would be wrong to resume from.
        for child in out_dir.iterdir():
            if child.name not in KEEP_ON_CONFIG_CHANGE:
                # missing_ok: under accelerate/torchrun every rank cleans the same folder
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    manifest = {
        "stage": spec.name, "kind": spec.kind, "recipe": str(recipe.path), "status": "running",
        "fingerprint": fp, "config": spec.config.model_dump(mode="json"), "inputs": inputs,
        "versions": library_versions(), "seed": recipe.seed,
        "timings": {"started": _dt.datetime.now().isoformat(timespec="seconds")},
        "resumed": bool(old and old.get("fingerprint") == fp and old.get("status") != "done"),
    }
    _write_manifest(out_dir, manifest)
    ctx = StageContext(name=spec.name, kind=spec.kind, out_dir=out_dir, run_dir=recipe.output_dir / recipe.name,
                       recipe=recipe, seed=recipe.seed)
    _set_seed(recipe.seed)
    try:
        result: StageResult = load_stage(spec.kind).run(spec.config, ctx)
    except BaseException as e:
        manifest.update(status="failed", error=f"{type(e).__name__}: {e}")
        manifest["timings"]["failed_after_s"] = round(time.time() - started, 2)
        _write_manifest(out_dir, manifest)
        raise
    manifest.update(status="done", outputs=result.outputs, counts=result.counts, dropped=result.dropped,
                    metrics=result.metrics, usage=result.usage or ctx.usage(), resolved_inputs=ctx.inputs)
    manifest["timings"].update(finished=_dt.datetime.now().isoformat(timespec="seconds"),
                               seconds=round(time.time() - started, 2))
    _write_manifest(out_dir, manifest)
    return manifest


def _set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_recipe(recipe: Recipe, from_stage: str | None = None, only: list[str] | None = None,
               force: bool = False) -> list[dict]:
    """Validate, then run the selected stages in order; returns their manifests."""
    problems = validate_recipe(recipe)
    if problems:
        raise ConfigError(f"{recipe.path}: recipe is not valid:\n  - " + "\n  - ".join(problems))
    run_dir = recipe.output_dir / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    manifests = []
    # SIGTERM (e.g. `kill`, a job scheduler) unwinds like Ctrl-C, so manifests say "failed" and
    # local servers are stopped.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for spec in _select(recipe, from_stage, only):
            log.info("[stage] %s (%s)", spec.name, spec.kind)
            manifests.append(run_stage(recipe, spec, force=force))
    finally:
        stop_servers()
        log.removeHandler(handler)
    return manifests
