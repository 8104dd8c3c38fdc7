"""The one rule for running under ``torchrun`` / ``accelerate launch``: side effects on the main process only.

Every process runs the same recipe code (SPMD). Training parallelises through the Trainer; everything a stage
does *once* — LLM API calls, caches, manifests, clearing a stage folder, writing samples — runs on the main
process (global rank 0) while the others wait for its result. Stages never test ranks themselves: they call

    result = run_on_main(fn, *args)     # fn runs on rank 0; every rank gets its return value (or its error)
    parts = all_gather(obj)             # every rank's obj, in rank order (sharded work, e.g. sampling)

Without a launcher (one process), or nested inside a main-only step, both are plain calls. The runner runs
whole data/eval/report stages this way; training stages (``distributed = True``) run on every process. The ranks talk through the process group's key-value
store, not a collective, so the others can wait hours for a main-process API stage without hitting the
collective timeout, and results too big for a broadcast still pass.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_counter = {"n": 0}  # call sequence number: identical on every rank because every rank runs the same code
_solo = {"on": False}  # inside a main-only step: the other processes are not running this code


def world_size() -> int:
    """Processes in the job (``WORLD_SIZE`` set by torchrun/accelerate; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """Global rank of this process (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on the process that does a stage's side effects."""
    return rank() == 0


def _store():
    """The process group's key-value store, initialising the group (as accelerate would) if needed."""
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # accelerate/Trainer find the group initialised and reuse it (accelerate/state.py checks is_initialized)
        dist.init_process_group(backend="cuda:nccl,cpu:gloo" if cuda else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    return dist.distributed_c10d._get_default_store()


def _wait_get(store, key: str) -> bytes:
    """Poll (no blocking timeout): the main process may take hours on API calls."""
    while not store.check([key]):
        time.sleep(0.2)
    return store.get(key)


def run_on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the main process only; every process returns its result (or raises its error).

    Args:
        fn: the side-effecting step (API calls, file writes). Its return value must pickle.
    """
    if world_size() <= 1 or _solo["on"]:  # nested in a main-only step: the others are not here to wait
        return fn(*args, **kwargs)
    store = _store()
    _counter["n"] += 1
    key = f"hypnos/main/{_counter['n']}"
    if is_main():
        _solo["on"] = True
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:
            store.set(key, pickle.dumps(("error", f"{type(e).__name__}: {e}")))
            raise
        finally:
            _solo["on"] = False
        store.set(key, pickle.dumps(("ok", result)))
        return result
    status, value = pickle.loads(_wait_get(store, key))
    if status == "error":
        raise RuntimeError(f"the main process failed: {value}")
    return value


def all_gather(obj: T) -> list[T]:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    n = world_size()
    if n <= 1 or _solo["on"]:
        return [obj]
    store = _store()
    _counter["n"] += 1
    prefix = f"hypnos/gather/{_counter['n']}"
    store.set(f"{prefix}/{rank()}", pickle.dumps(obj))
    return [pickle.loads(_wait_get(store, f"{prefix}/{r}")) for r in range(n)]


def barrier() -> None:
    """Wait until every process reaches this point."""
    all_gather(None)


def shard(items: list[T]) -> tuple[list[T], int]:
    """This process's contiguous share of ``items`` and its start index (all of it in one process)."""
    n, r = world_size(), rank()
    per = -(-len(items) // n) if items else 0
    start = min(r * per, len(items))
    return items[start: start + per], start
