"""The generation engine behind ``hypnos serve``: one model, one worker thread, batched decoding.

Requests are queued from the asyncio side. The worker takes the first one, waits ``batch_window_s`` for
more (and takes everything that queued up while the previous batch ran), left-pads the prompts into one
batch and decodes them together with a KV cache, one token per step for every row. Each row samples with
its own parameters: temperature 0 is greedy, otherwise temperature + top-p with a ``torch.Generator``
seeded per request, so a request with a ``seed`` gives the same output every time it runs alone. Rows
leave the batch as they finish (EOS, a stop string, ``max_tokens``, or the client went away).

Text is released to the caller incrementally: never half of a UTF-8 character (byte-level BPE splits
Chinese characters into single-byte tokens) and never text that could still turn out to start a stop
string. Log-probabilities are those of the model itself (log-softmax of the raw logits, before
temperature and top-p), as in the OpenAI API.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hypnos.common.models import load_causal_lm, load_tokenizer, resolve_model

log = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    """How to sample one request; every row of a batch can differ."""

    max_tokens: int
    temperature: float = 1.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    """Seeds the request's own generator; None draws a random seed."""
    top_logprobs: int = 0
    """How many alternatives to report per token (tokens' own logprobs are always computed)."""


@dataclass
class TokenInfo:
    """One generated token with its log-probability and the most likely alternatives."""

    id: int
    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]
    """(token, bytes, logprob) of the ``top_logprobs`` most likely tokens, best first."""


@dataclass
class Delta:
    """New output of one choice: text released since the last delta and the tokens behind it."""

    index: int
    text: str
    tokens: list[TokenInfo]
    finish_reason: str | None = None
    """``stop`` or ``length`` on the last delta of a choice."""
    completion_tokens: int = 0
    """Set on the last delta: tokens this choice generated (EOS excluded)."""


@dataclass
class _Job:
    prompt_ids: list[int]
    params: SamplingParams
    n: int
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    cancelled: bool = False

    def emit(self, item: list[Delta] | BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the caller's event loop is gone (server shut down): nobody is listening
            self.cancelled = True


@dataclass
class _Row:
    job: _Job
    index: int
    generator: torch.Generator
    ids: list[int] = field(default_factory=list)
    infos: list[TokenInfo] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # char offset where each token's text ends
    sent_chars: int = 0
    sent_tokens: int = 0
    text: str = ""
    done: bool = False


class Engine:
    """Serve one causal LM: tokenisation, batched generation on a worker thread.

    Args:
        model: model reference (see ``hypnos.common.models.resolve_model``).
        device: torch device; default CUDA when available, else CPU.
        max_batch_rows: most sequences decoded together (a request with ``n`` choices takes ``n`` rows).
        batch_window_s: how long the worker waits for more requests after the first one arrives.
    """

    def __init__(self, model: str | os.PathLike, device: str | None = None, max_batch_rows: int = 16,
                 batch_window_s: float = 0.005):
        self.path: Path = resolve_model(model)
        self.tokenizer = load_tokenizer(self.path)
        self.model = load_causal_lm(self.path, device=device)
        self.device = self.model.device
        self.max_batch_rows, self.batch_window_s = max_batch_rows, batch_window_s
        self.context_length: int = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._byte_level = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"
        self._byte_decoder = _byte_decoder()
        self._token_cache: dict[int, tuple[str, list[int]]] = {}
        self.stats = {"batches": 0, "rows": 0, "tokens": 0, "seconds": 0.0}
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._worker, name=f"engine-{self.path.name}", daemon=True)
        self._thread.start()

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    # ----------------------------------------------------------------------------- tokenisation
    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation rendered with the model's chat template, ready for the answer."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def encode_text(self, prompt: str) -> list[int]:
        """Token ids of a raw completion prompt (an empty prompt becomes the BOS token, if any)."""
        ids = self.tokenizer(prompt).input_ids
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id]
        return ids

    def token_text(self, token_id: int) -> tuple[str, list[int]]:
        """The text and UTF-8 bytes of one token (the text may hold U+FFFD for a partial character)."""
        if token_id not in self._token_cache:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if self._byte_level and all(c in self._byte_decoder for c in piece):
                raw = bytes(self._byte_decoder[c] for c in piece)
            elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # SentencePiece byte
                raw = bytes([int(piece[3:5], 16)])
            else:
                raw = piece.replace("\u2581", " ").encode()
            self._token_cache[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self._token_cache[token_id]

    # ----------------------------------------------------------------------------- asyncio side
    async def generate(self, prompt_ids: list[int], params: SamplingParams, n: int = 1) -> AsyncIterator[list[Delta]]:
        """Generate ``n`` choices for one prompt; yields lists of deltas as text becomes final.

        Closing the iterator early (client disconnected) removes the request's rows from the batch.
        """
        job = _Job(prompt_ids, params, n, asyncio.get_running_loop(), asyncio.Queue())
        self._queue.put(job)
        try:
            while (item := await job.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled = True

    def close(self) -> None:
        """Stop the worker thread after the running batch."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    # ----------------------------------------------------------------------------- worker side
    def _worker(self) -> None:
        while (job := self._queue.get()) is not None:
            jobs, rows = [job], job.n
            deadline = time.monotonic() + self.batch_window_s
            while rows < self.max_batch_rows:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                jobs.append(nxt)
                rows += nxt.n
            jobs = [j for j in jobs if not j.cancelled]
            try:
                if jobs:
                    self._run_batch(jobs)
            except Exception as e:  # reported to every waiting request; the worker goes on
                log.exception("generation failed")
                for j in jobs:
                    j.emit(e)

    @torch.inference_mode()
    def _run_batch(self, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        rows: list[_Row] = []
        for job in jobs:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(job.params.seed if job.params.seed is not None else secrets.randbits(63))
            rows += [_Row(job, i, gen) for i in range(job.n)]
        width = max(len(r.job.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's next token lands in the last column
            input_ids[i, width - len(r.job.prompt_ids):] = torch.tensor(r.job.prompt_ids)
            mask[i, width - len(r.job.prompt_ids):] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache, active = None, rows
        pending = {id(j): len([r for r in rows if r.job is j]) for j in jobs}
        while active:
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                             past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            next_ids = [self._sample(logits[i], r) for i, r in enumerate(active)]
            by_job: dict[int, list[Delta]] = {}
            for i, (r, tok) in enumerate(zip(active, next_ids)):
                delta = self._advance(r, tok, logprobs[i])
                if delta is not None:
                    by_job.setdefault(id(r.job), []).append(delta)
            for r in active:
                if id(r.job) in by_job:
                    r.job.emit(by_job.pop(id(r.job)))
                if r.done:
                    pending[id(r.job)] -= 1
                    if pending[id(r.job)] == 0 and not r.job.cancelled:
                        r.job.emit(None)
            keep = [i for i, r in enumerate(active) if not r.done]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                next_ids = [next_ids[i] for i in keep]
                active = [active[i] for i in keep]
            input_ids = torch.tensor(next_ids, device=self.device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["tokens"] += sum(len(r.ids) for r in rows)
        self.stats["seconds"] += time.perf_counter() - start

    def _sample(self, logits: torch.Tensor, row: _Row) -> int:
        p = row.job.params
        if p.temperature == 0 or p.top_p == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
            probs = probs.scatter(0, order[drop], 0.0)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _advance(self, row: _Row, token_id: int, logprobs: torch.Tensor) -> Delta | None:
        """Append one token to a row; return the text and tokens that became final, if any."""
        p = row.job.params
        if row.job.cancelled:
            row.done = True
            return None
        if token_id in self.eos_ids:
            return self._finish(row, "stop", len(row.text))
        row.ids.append(token_id)
        row.infos.append(self._token_info(token_id, logprobs, p.top_logprobs))
        row.text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        row.ends.append(len(row.text))
        hits = [i for i in (row.text.find(s, max(0, row.sent_chars - len(s))) for s in p.stop) if i >= 0]
        if hits:
            return self._finish(row, "stop", min(hits))
        if len(row.ids) >= p.max_tokens:
            return self._finish(row, "length", len(row.text))
        stable = len(row.text.rstrip("\ufffd"))  # never release half a UTF-8 character
        safe = stable - max((len(s) - 1 for s in p.stop), default=0)  # nor the possible start of a stop
        if safe <= row.sent_chars:
            return None
        return self._release(row, safe, lambda i: row.ends[i] <= safe)

    def _finish(self, row: _Row, reason: str, cut: int) -> Delta:
        row.done = True
        # tokens whose text starts before the cut (so a token straddling a stop string is kept)
        delta = self._release(row, cut, lambda i: (row.ends[i - 1] if i else 0) < cut or row.ends[i] <= cut)
        delta.finish_reason, delta.completion_tokens = reason, len(row.ids)
        return delta

    def _release(self, row: _Row, upto: int, take) -> Delta:
        text = row.text[row.sent_chars:upto] if upto > row.sent_chars else ""
        row.sent_chars = max(row.sent_chars, upto)
        tokens = []
        while row.sent_tokens < len(row.infos) and take(row.sent_tokens):
            tokens.append(row.infos[row.sent_tokens])
            row.sent_tokens += 1
        return Delta(row.index, text, tokens)

    def _token_info(self, token_id: int, logprobs: torch.Tensor, k: int) -> TokenInfo:
        text, raw = self.token_text(token_id)
        top = []
        if k:
            values, ids = logprobs.topk(k)
            top = [(*self.token_text(int(t)), float(v)) for v, t in zip(values, ids)]
        return TokenInfo(token_id, text, raw, float(logprobs[token_id]), top)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: printable character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}
