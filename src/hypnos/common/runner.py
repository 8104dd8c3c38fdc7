"""The recipe runner: ``hypnos validate RECIPE`` and ``hypnos run RECIPE [--from S] [--only S]``.

A recipe is one YAML file: a name, LLM endpoints, and a list of stages. Each stage runs into
``<output_dir>/<recipe name>/<stage name>/`` and writes ``manifest.json`` there (resolved config,
input fingerprints, library versions, counts kept/dropped with reasons, timings). A stage whose
config and inputs are unchanged since it last finished is skipped; a stage killed midway starts
again in the same folder, where it finds what it already did (LLM answers, training checkpoints).
"""

from __future__ import annotations

import codecs
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
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

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
    structured_outputs: Literal["auto", "json_schema", "json_object", "off"] = "auto"
    """``response_format`` handling (see ``hypnos.data.clients.Endpoint``): auto sends the JSON schema and
    falls back to parsing text when the server refuses it."""
    max_tokens_param: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    """Name of the length limit; reasoning models want ``max_completion_tokens``."""


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


def _config_error(path: Path, lines: dict, loc: tuple, stage: str, err: ValidationError,
                  what: str = "stage") -> ConfigError:
    msgs = []
    for e in err.errors():
        key_loc = loc + tuple(e["loc"])
        key = ".".join(str(x) for x in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        msgs.append(f"{_where(path, lines, key_loc)}: {what} {stage!r}: " + (f"{key}: {msg}" if key else msg))
    return ConfigError("\n".join(msgs))


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 does: ``1e-4`` and ``2E5`` are numbers, not strings.

    (PyYAML follows YAML 1.1, where a float needs a dot: ``learning_rate: 1e-4`` became the string "1e-4" and
    failed deep inside the trainer.)
    """


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader subclass: no arbitrary objects


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """``stage.key=value`` strings (value parsed as YAML) for ``hypnos run ... sft.max_steps=2``."""
    out = []
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not KEY=VALUE (e.g. sft_general.max_steps=2)")
        k, v = o.split("=", 1)
        try:
            out.append((k.split("."), _yaml(v)))
        except yaml.YAMLError as e:
            raise ConfigError(f"override {o!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
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
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give the recipe's YAML file (e.g. {path}/demo.yaml)")
    try:
        text = _expand_env(path, path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at byte {e.start + 1})") from None
    try:
        tree = yaml.compose(text)
        data = _yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    lines = _key_lines(tree) if tree is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with name, endpoints and stages")
    for keys, value in parse_overrides(overrides or []):
        _apply_override(path, data, keys, value)

    # Every problem is collected, so one run of `hypnos validate` shows them all.
    errors: list[str] = []
    allowed = {"name", "description", "seed", "output_dir", "endpoints", "stages"}
    for k in data:
        if k not in allowed:
            errors.append(f"{_where(path, lines, (k,))}: unknown top-level key {k!r} (allowed: {sorted(allowed)})")
    if "name" not in data:
        errors.append(f"{path}: the recipe needs a `name` (its runs go to runs/<name>/)")
    for key, types, what in (("name", (str, int), "text"), ("seed", (int,), "an integer"),
                             ("output_dir", (str,), "a folder path"), ("description", (str,), "text")):
        if key in data and (not isinstance(data[key], types) or isinstance(data[key], bool)):
            errors.append(f"{_where(path, lines, (key,))}: `{key}` must be {what}, got {data[key]!r}")

    endpoints = {}
    raw_endpoints = data.get("endpoints") or {}
    if not isinstance(raw_endpoints, dict):
        errors.append(f"{_where(path, lines, ('endpoints',))}: `endpoints` is a mapping of name -> endpoint")
        raw_endpoints = {}
    for name, spec in raw_endpoints.items():
        try:
            endpoints[name] = EndpointSpec.model_validate(spec)
        except ValidationError as e:
            errors.append(str(_config_error(path, lines, ("endpoints", name), name, e, what="endpoint")))

    stages, seen = [], set()
    raw_stages = data.get("stages") or []
    if not isinstance(raw_stages, list):
        errors.append(f"{_where(path, lines, ('stages',))}: `stages` is a list of stages")
        raw_stages = []
    for i, entry in enumerate(raw_stages):
        where = _where(path, lines, ("stages", i))
        if not isinstance(entry, dict) or "name" not in entry:
            errors.append(f"{where}: each stage needs a `name`")
            continue
        entry = dict(entry)
        name = entry.pop("name")
        kind = entry.pop("kind", name)
        if not isinstance(name, str) or not isinstance(kind, str):
            errors.append(f"{where}: a stage's `name` and `kind` are words, got name {name!r}, kind {kind!r}")
            continue
        if name in seen:
            errors.append(f"{where}: duplicate stage name {name!r}")
        seen.add(name)
        if kind not in STAGES:
            errors.append(f"{where}: stage {name!r}: unknown kind {kind!r} (known: {', '.join(STAGES)})")
            continue
        cfg_cls = load_stage(kind).Config
        try:
            cfg = cfg_cls.model_validate(entry)
        except ValidationError as e:
            errors.append(str(_config_error(path, lines, ("stages", i), name, e)))
            continue
        stages.append(StageSpec(name=name, kind=kind, config=cfg, raw=entry))
    if errors:
        raise ConfigError("\n".join(errors))

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
        if isinstance(entry, dict) and entry.get("name") == keys[0]:
            target = entry
            for k in keys[1:-1]:
                target = target.setdefault(k, {}) if isinstance(target, dict) else None
            if len(keys) < 2:
                raise ConfigError(f"{path}: override {keys[0]}: name a field of the stage, e.g. {keys[0]}.on_error=quarantine")
            if not isinstance(target, dict):
                raise ConfigError(f"{path}: override {'.'.join(keys)}: {'.'.join(keys[:-1])} is not a mapping")
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
        stage, output = _split_ref(ref)
        names = [s.name for s in recipe.stages]
        if stage not in names:
            return [f"stage {current!r}: {what} {ref!r} names no stage of this recipe"]
        if current in names and names.index(stage) >= names.index(current):
            return [f"stage {current!r}: {what} {ref!r} refers to a later stage"]
        known = output_names(recipe, stage)
        if output is not None and known and output not in known:
            return [(f"stage {current!r}: {what} {ref!r}: stage {stage!r} has no output {output!r} "
                     f"(it has: {', '.join(known)})")]
        return []
    p = resolve_ref(recipe, ref)
    return [] if p.exists() else [f"stage {current!r}: {what} {ref!r}: file not found ({p})"]


# Output names of each stage kind (a stage module may declare its own as ``OUTPUTS``), so `validate`
# catches a misspelt "@stage.output" before anything runs.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "generate": ("generated", "failed"), "crossfilter": ("kept", "dropped"),
    "dedup": ("kept", "dropped", "clusters"), "decontaminate": ("kept", "dropped"),
    "deidentify": ("scrubbed", "dropped"), "mix": ("train", "val"), "tokenizer": ("model", "analysis"),
    "pretrain": ("model", "adapter"), "sft": ("model", "adapter"), "dpo": ("model", "adapter"),
    "reward": ("model", "adapter", "data"), "rejection_sampling": ("model",),
    "eval": ("results", "predictions"), "report": ("report", "json"),
}


def output_names(recipe: Recipe, stage: str) -> tuple[str, ...]:
    """The outputs stage ``stage`` of this recipe can have (empty when unknown)."""
    kind = next((s.kind for s in recipe.stages if s.name == stage), None)
    if kind is None:
        return ()
    declared = getattr(load_stage(kind), "OUTPUTS", None)
    return tuple(declared) if declared else STAGE_OUTPUTS.get(kind, ())


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
                    max_concurrency=spec.max_concurrency, timeout_s=spec.timeout_s, max_retries=spec.max_retries,
                    structured_outputs=spec.structured_outputs, max_tokens_param=spec.max_tokens_param)


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
        except Exception as e:  # noqa: BLE001 - one stage's broken check must not hide the other problems
            problems.append(str(e) if isinstance(e, ConfigError) else f"stage {s.name!r}: {type(e).__name__}: {e}")
        # Every reference, whether or not the stage's own check looks at it.
        for ref in _walk_strings(s.config.model_dump(mode="json")):
            if is_ref(ref):
                problems += check_ref(recipe, s.name, ref, "reference")
        if getattr(s.config, "encoding", None):
            try:
                codecs.lookup(s.config.encoding)
            except LookupError:
                problems.append(f"stage {s.name!r}: unknown encoding {s.config.encoding!r}")
    # A reference checked twice (by the stage and above) is reported once.
    out, seen = [], set()
    for p in problems:
        key = re.sub(r"^(stage '[^']*': )\w+ ", r"\1", p)  # "source '@a'" and "reference '@a'" alike
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


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
    tmp = stage_dir / f"manifest.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, stage_dir / "manifest.json")
    log.info("manifest %s written (%s) by pid %d", stage_dir.name, manifest.get("status"), os.getpid())


_FP_CACHE: dict[tuple, str] = {}
_FP_DISK: dict[str, Path] = {}  # run dir -> its fingerprint cache file, loaded into _FP_CACHE once


def _load_fp_cache(run_dir: Path) -> None:
    """Fingerprints computed by earlier runs, so a big unchanged file (a checkpoint) is not hashed again."""
    f = run_dir / ".fingerprints.json"
    if str(run_dir) in _FP_DISK:
        return
    _FP_DISK[str(run_dir)] = f
    try:
        for entry in json.loads(f.read_text(encoding="utf-8")):
            _FP_CACHE[tuple(entry[:-1])] = entry[-1]
    except (OSError, ValueError, TypeError):
        pass  # no cache yet, or a torn one: hash again


def _save_fp_cache(run_dir: Path) -> None:
    f = run_dir / ".fingerprints.json"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps([[*k, v] for k, v in _FP_CACHE.items() if _current(k)]), encoding="utf-8")
        os.replace(tmp, f)
    except OSError:
        pass  # only a cache


def _current(key: tuple) -> bool:
    """Whether a cache key still describes the file at its path (stale entries are not saved)."""
    try:
        st = os.stat(key[0])
    except OSError:
        return False
    return (st.st_ino, st.st_size, st.st_mtime_ns) == tuple(key[1:])


def _fingerprint_file(p: Path) -> str:
    """sha256 of a file's bytes, or of a folder's files; each file's hash is cached by (path, inode,
    size, mtime), so an unchanged file is never read twice and any rewrite or hand edit is noticed."""
    from hypnos.common.io import sha256_file

    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode())
            h.update(_fingerprint_file(f).encode())
        return h.hexdigest()
    st = p.stat()
    key = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _FP_CACHE:
        _FP_CACHE[key] = sha256_file(p)
    return _FP_CACHE[key]


def output_fingerprints(stage_dir: Path, outputs: dict[str, str]) -> dict[str, str]:
    """Fingerprint of each output of a finished stage (what downstream stages are keyed on)."""
    return {name: _fingerprint_file(stage_dir / rel) if (stage_dir / rel).exists() else "missing"
            for name, rel in outputs.items()}


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
    """Fingerprints of everything a stage reads: upstream outputs, input files, endpoints it names."""
    run_dir = recipe.output_dir / recipe.name
    _load_fp_cache(run_dir)
    cfg = spec.config.model_dump(mode="json")
    inputs: dict[str, str] = {}
    for s in _walk_strings(cfg):
        if is_ref(s):
            # Keyed on the upstream output's bytes, not its manifest: an upstream re-run that writes the
            # same output re-runs nothing downstream, and a hand-edited output re-runs what reads it.
            try:
                p = resolve_ref(recipe, s)
                inputs[s] = _fingerprint_file(p) if p.exists() else "missing"
            except ConfigError:
                inputs[s] = "missing"
        elif s in recipe.endpoints:
            inputs[f"endpoint:{s}"] = hashlib.sha256(recipe.endpoints[s].model_dump_json().encode()).hexdigest()
            served = _served_weights(recipe, recipe.endpoints[s])
            if served is not None:  # a model Hypnos serves from a folder or a stage: its weights, not its name
                inputs[f"served_model:{s}"] = served
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
    _save_fp_cache(run_dir)
    return inputs


def _served_weights(recipe: Recipe, ep: EndpointSpec) -> str | None:
    """Fingerprint of the local model a ``serve: true`` endpoint serves (None: a built-in or hub model)."""
    if not ep.serve:
        return None
    try:
        p = resolve_ref(recipe, ep.model)
        return _fingerprint_file(p) if p.exists() else ("missing" if is_ref(ep.model) else None)
    except (ConfigError, OSError):
        return "missing"


def _drop_stale_answers(out_dir: Path, old_inputs: dict, inputs: dict) -> None:
    """Forget the cached answers of a served endpoint whose weights changed: its requests (same model name,
    loopback) would otherwise be answered by what the old weights said."""
    for k, v in inputs.items():
        if k.startswith("served_model:") and old_inputs.get(k) not in (None, v):
            name = k.split(":", 1)[1]
            for f in (out_dir / "llm_cache").glob(f"{name}.*"):
                f.unlink(missing_ok=True)
                log.info("%s: dropped (the weights of %r changed)", f, name)


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
    """Run one stage (or skip it when its config and inputs are unchanged); return its manifest.

    Under torchrun/accelerate the skip decision, folder clearing and manifest writes happen on the main
    process only (``common/dist.py``); every process runs the stage itself.
    """
    from hypnos.common import dist

    out_dir = recipe.stage_dir(spec.name)
    manifest = dist.run_on_main(_start_stage, recipe, spec, force)
    if manifest.get("skipped"):
        return manifest
    started = time.time()
    ctx = StageContext(name=spec.name, kind=spec.kind, out_dir=out_dir, run_dir=recipe.output_dir / recipe.name,
                       recipe=recipe, seed=recipe.seed)
    _set_seed(recipe.seed)
    try:
        if getattr(type(spec.config), "distributed", False):  # training: every process takes part
            result, reading = _run_reading(spec, ctx)
        else:  # data, eval, report stages: the main process alone; the others wait for its result
            result, reading = _run_on_main_only(spec, ctx)
    except BaseException as e:
        manifest.update(status="failed", error=f"{type(e).__name__}: {e}")
        manifest["timings"]["failed_after_s"] = round(time.time() - started, 2)
        if dist.is_main():
            _write_manifest(out_dir, manifest)
        raise
    manifest.update(status="done", outputs=result.outputs, counts=result.counts, dropped=result.dropped,
                    metrics=result.metrics, usage=result.usage or ctx.usage(), resolved_inputs=ctx.inputs)
    if dist.is_main():
        _note_reading(manifest, reading, out_dir)
        manifest["output_fingerprints"] = output_fingerprints(out_dir, result.outputs)
    manifest["timings"].update(finished=_dt.datetime.now().isoformat(timespec="seconds"),
                               seconds=round(time.time() - started, 2))
    dist.run_on_main(_write_manifest, out_dir, manifest)  # the others wait: the next stage reads it
    return manifest


MAX_STAGE_REJECTS = 50
"""With ``on_error: quarantine``, how many rows a stage itself may reject (each costs a re-run) before the
runner gives up and asks for the input to be fixed."""


def _run_on_main_only(spec: StageSpec, ctx: StageContext) -> tuple[StageResult, Any]:
    """``_run_reading`` on the main process; the others get its StageResult (and no read policy)."""
    from hypnos.common import dist

    box: dict[str, Any] = {}

    def main_part() -> StageResult:
        box["result"], box["reading"] = _run_reading(spec, ctx)
        return box["result"]

    return dist.run_on_main(main_part), box.get("reading")


def _run_reading(spec: StageSpec, ctx: StageContext) -> tuple[StageResult, Any]:
    """Run a stage under its read policy (``on_error``, ``encoding``); return its result and what it read.

    Bad rows found while reading are quarantined by ``iter_rows`` itself. A row the stage rejects on its
    own (a DataError it raises with a file and line) is quarantined too, and the stage runs again without
    it: stages resume from their own partial work (LLM cache, appended outputs), so this is cheap.
    """
    from hypnos.common.io import DataError, ReadPolicy, read_policy

    cfg = spec.config
    policy = ReadPolicy(on_error=getattr(cfg, "on_error", "raise"), encoding=getattr(cfg, "encoding", None),
                        own_dir=str(ctx.run_dir.resolve()))
    with read_policy(policy):
        while True:
            try:
                return load_stage(spec.kind).run(cfg, ctx), policy
            except DataError as e:
                if policy.on_error != "quarantine" or e.line is None or (e.path, e.line) in policy.exclude:
                    raise
                if len(policy.exclude) >= MAX_STAGE_REJECTS:
                    raise DataError(e.path, e.line, f"{e.reason} (and {len(policy.exclude)} more rows rejected "
                                    "by the stage itself: fix the input)") from None
                policy.reject(e)
                policy.exclude.add((e.path, e.line))
                log.warning("%s: quarantined; running stage %s again without it", e, spec.name)


def _note_reading(manifest: dict, policy: Any, out_dir: Path) -> None:
    """Write the stage's quarantined rows to ``quarantine/`` and put counts and warnings in the manifest."""
    from hypnos.common.io import write_quarantine

    quarantined, warnings = {}, list(manifest.get("warnings", []))
    names: set[str] = set()
    for path, errors in sorted(policy.bad.items()):
        name = Path(path).name
        while name in names:  # two inputs with the same file name
            name = "_" + name
        names.add(name)
        rel = f"quarantine/{name}.quarantine.jsonl"
        bad = sorted(errors.values(), key=lambda e: e.line or 0)
        write_quarantine(bad, out_dir / rel)
        reasons: dict[str, int] = {}
        for e in bad:
            k = e.reason.split(":")[0]
            reasons[k] = reasons.get(k, 0) + 1
        quarantined[path] = {"rows": len(bad), "read": policy.rows.get(path), "file": rel, "reasons": reasons}
        log.warning("%s: %d bad row(s) quarantined in %s", path, len(bad), out_dir / rel)
    for path, n in sorted(policy.rows.items()):
        if n == 0:
            warnings.append(f"{path}: no rows (empty input)")
        elif path in quarantined and quarantined[path]["rows"] >= n:
            warnings.append(f"{path}: all {n} rows were bad and quarantined")
    for w in warnings[len(manifest.get("warnings", [])):]:
        log.warning("warning: %s", w)
    if quarantined:
        manifest["quarantined"] = quarantined
    if warnings:
        manifest["warnings"] = warnings


def _start_stage(recipe: Recipe, spec: StageSpec, force: bool) -> dict:
    """Main process: skip (manifest with ``skipped``) or clear a changed folder and write the running manifest."""
    out_dir = recipe.stage_dir(spec.name)
    inputs = stage_inputs(recipe, spec)
    fp = _fingerprint(spec, inputs, recipe.seed)
    old = read_manifest(out_dir)
    if (not force and old and old.get("status") == "done" and old.get("fingerprint") == fp
            and all((out_dir / p).exists() for p in old["outputs"].values())):
        log.info("[skip] %s: unchanged since %s", spec.name, old["timings"]["finished"])
        old["skipped"] = True
        for name, was in (old.get("output_fingerprints") or {}).items():
            if output_fingerprints(out_dir, {name: old["outputs"][name]})[name] != was:
                w = (f"stage {spec.name!r}: output {name!r} ({out_dir / old['outputs'][name]}) changed since the "
                     "stage wrote it; kept as it is (stages reading it re-run; --force regenerates it)")
                log.warning("%s", w)
                old.setdefault("warnings", []).append(w)
        return old
    if old and out_dir.exists():
        _drop_stale_answers(out_dir, old.get("inputs") or {}, inputs)
    if old and (force or old.get("fingerprint") != fp) and out_dir.exists():
        # A different config or input: earlier partial work would be wrong to resume from.
        for child in out_dir.iterdir():
            if child.name not in KEEP_ON_CONFIG_CHANGE:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "stage": spec.name, "kind": spec.kind, "recipe": str(recipe.path), "status": "running",
        "fingerprint": fp, "config": spec.config.model_dump(mode="json"), "inputs": inputs,
        "versions": library_versions(), "seed": recipe.seed,
        "timings": {"started": _dt.datetime.now().isoformat(timespec="seconds")},
        "resumed": bool(old and old.get("fingerprint") == fp and old.get("status") != "done"),
    }
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
    from hypnos.common.dist import is_main

    # one run.log writer; the other processes of a torchrun/accelerate job log to their stderr only
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8") if is_main() else logging.NullHandler()
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
            try:
                manifests.append(run_stage(recipe, spec, force=force))
            except Exception as e:
                # The command line shows one line; the traceback goes to run.log only.
                handler.handle(logging.LogRecord("hypnos", logging.ERROR, __file__, 0, "stage %s failed: %s",
                                                 (spec.name, e), sys.exc_info()))
                raise
    finally:
        stop_servers()
        log.removeHandler(handler)
    return manifests
