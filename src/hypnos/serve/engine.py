"""The generation engine behind ``hypnos serve``: one model, one worker thread, batched decoding.

Requests are queued from the asyncio side. The worker takes the first one, waits ``batch_window_s`` for
more, left-pads the prompts into one batch and decodes them together with a KV cache, one token per step
for every row. Requests that arrive while a batch runs join it between two steps (their prompts are
prefilled on their own, then both KV caches are left-padded to one width and concatenated), so the batch
stays full under a steady stream of requests instead of waiting for its slowest row. Rows leave the batch
as they finish (EOS, a stop string, ``max_tokens``, or the client went away).

Each row samples with its own parameters: temperature 0 is greedy, otherwise temperature + top-p with a
``torch.Generator`` seeded per request, so a request with a ``seed`` gives the same output on every run
(up to float noise from the padding of whichever requests it happens to share a batch with).

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
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from hypnos.common.models import load_causal_lm, load_tokenizer, resolve_model
from hypnos.tokenizer.extend import bytes_to_unicode

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
    remaining: int = 0  # rows still decoding

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


@dataclass
class _Batch:
    """Rows decoding together: their KV cache, attention mask and next positions (left padded)."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor


def _merge(a: _Batch, b: _Batch | None) -> _Batch:
    """Join two batches after a forward step, left-padding the shorter KV cache and mask with masked zeros."""
    if b is None:
        return a
    width = max(a.mask.shape[1], b.mask.shape[1])
    pad_a, pad_b = width - a.mask.shape[1], width - b.mask.shape[1]
    for la, lb in zip(a.cache.layers, b.cache.layers):
        la.keys = torch.cat([F.pad(la.keys, (0, 0, pad_a, 0)), F.pad(lb.keys, (0, 0, pad_b, 0))])
        la.values = torch.cat([F.pad(la.values, (0, 0, pad_a, 0)), F.pad(lb.values, (0, 0, pad_b, 0))])
    a.mask = torch.cat([F.pad(a.mask, (pad_a, 0)), F.pad(b.mask, (pad_b, 0))])
    a.positions = torch.cat([a.positions[:, -1:], b.positions[:, -1:]])
    a.rows += b.rows
    return a


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
        # prefills: prompt batches run; steps: decode forwards; tokens/steps is the mean batch size
        self.stats = {"prefills": 0, "steps": 0, "rows": 0, "tokens": 0, "seconds": 0.0}
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: _Job | None = None  # taken from the queue, waiting for room in a batch
        self._batch_jobs: list[_Job] = []
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
        while (job := self._next_job(block=True)) is not None:
            jobs = [job]
            deadline = time.monotonic() + self.batch_window_s
            while (room := self.max_batch_rows - sum(j.n for j in jobs)) > 0 and (
                    more := self._next_job(timeout=max(0.0, deadline - time.monotonic()), room=room)) is not None:
                jobs.append(more)
            self._batch_jobs = list(jobs)
            try:
                self._run(jobs)
            except Exception as e:  # reported to every request of the batch; the worker goes on
                log.exception("generation failed")
                for j in self._batch_jobs:
                    j.emit(e)

    def _next_job(self, block: bool = False, timeout: float | None = None, room: int | None = None) -> _Job | None:
        """The next live queued job (None when there is none, or it needs more than ``room`` rows)."""
        while True:
            if self._held is None:
                try:
                    self._held = self._queue.get(block=block or timeout is not None, timeout=timeout)
                except queue.Empty:
                    return None
                if self._held is None:  # close(): leave the sentinel for the worker loop
                    self._queue.put(None)
                    return None
            job = self._held
            if job.cancelled:
                self._held = None
                continue
            if room is not None and job.n > room:
                return None  # keep it for the next batch
            self._held = None
            return job

    @torch.inference_mode()
    def _run(self, jobs: list[_Job]) -> None:
        """Decode until every row is done; queued requests join between steps while there is room."""
        start = time.perf_counter()
        batch = self._prefill(jobs)
        while batch is not None:
            batch = self._step(batch)
            if batch is not None and self._can_join(batch):
                joining = []
                while (job := self._next_job(room=self.max_batch_rows - len(batch.rows)
                                             - sum(j.n for j in joining))) is not None:
                    joining.append(job)
                if joining:
                    self._batch_jobs += joining
                    batch = _merge(batch, self._prefill(joining))
        self.stats["seconds"] += time.perf_counter() - start

    def _prefill(self, jobs: list[_Job]) -> _Batch | None:
        rows: list[_Row] = []
        for job in jobs:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(job.params.seed % 2**63 if job.params.seed is not None else secrets.randbits(63))
            job.remaining = job.n
            rows += [_Row(job, i, gen) for i in range(job.n)]
        self.stats["prefills"] += 1
        self.stats["rows"] += len(rows)
        width = max(len(r.job.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's next token lands in the last column
            input_ids[i, width - len(r.job.prompt_ids):] = torch.tensor(r.job.prompt_ids)
            mask[i, width - len(r.job.prompt_ids):] = 1
        mask = mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return self._forward(_Batch(rows, None, mask, positions), input_ids.to(self.device))

    def _step(self, batch: _Batch) -> _Batch | None:
        input_ids = torch.tensor([r.ids[-1] for r in batch.rows], device=self.device).unsqueeze(1)
        batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        batch.positions = batch.positions[:, -1:] + 1
        return self._forward(batch, input_ids)

    def _forward(self, batch: _Batch, input_ids: torch.Tensor) -> _Batch | None:
        """Run the model one step, sample a token for every row, emit what became final, drop finished rows."""
        out = self.model(input_ids=input_ids, attention_mask=batch.mask, position_ids=batch.positions,
                         past_key_values=batch.cache, use_cache=True)
        self.stats["steps"] += 1
        batch.cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        deltas: dict[int, tuple[_Job, list[Delta]]] = {}
        for i, (row, token) in enumerate(zip(batch.rows, self._sample(logits, batch.rows))):
            delta = self._advance(row, token, logprobs[i])
            if delta is not None:
                deltas.setdefault(id(row.job), (row.job, []))[1].append(delta)
        for job, job_deltas in deltas.values():
            job.emit(job_deltas)
        for row in batch.rows:
            if row.done:
                self.stats["tokens"] += len(row.ids)
                row.job.remaining -= 1
                if row.job.remaining == 0 and not row.job.cancelled:
                    row.job.emit(None)
        keep = [i for i, r in enumerate(batch.rows) if not r.done]
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            index = torch.tensor(keep, device=self.device)
            batch.cache.batch_select_indices(index)
            batch.mask, batch.positions = batch.mask[index], batch.positions[index]
            batch.rows = [batch.rows[i] for i in keep]
        return batch

    def _can_join(self, batch: _Batch) -> bool:
        # Joining left-pads the KV cache: only plain dynamic layers can take that (no sliding windows).
        waiting = self._held is not None or not self._queue.empty()
        return waiting and len(batch.rows) < self.max_batch_rows and all(
            type(layer) is DynamicLayer for layer in batch.cache.layers)

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """One token per row: greedy, or inverse-CDF sampling with the row's own generator.

        Inverse CDF (cumsum + searchsorted on one uniform draw) is ~100x faster on CPU than
        ``torch.multinomial`` over a 49k vocabulary, and just as reproducible.
        """
        choice = logits.argmax(-1).tolist()
        sampled = [i for i, r in enumerate(rows) if r.job.params.temperature > 0 and r.job.params.top_p > 0]
        if not sampled:
            return choice
        index = torch.tensor(sampled, device=logits.device)
        temps = torch.tensor([rows[i].job.params.temperature for i in sampled], device=logits.device)
        probs = torch.softmax(logits[index] / temps[:, None], dim=-1)
        for j, i in enumerate(sampled):
            top_p = rows[i].job.params.top_p
            row_probs, order = probs[j], None
            if top_p < 1.0:
                row_probs, order = row_probs.sort(descending=True)
                # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
                row_probs = row_probs.masked_fill(row_probs.cumsum(-1) - row_probs >= top_p, 0.0)
            cdf = row_probs.cumsum(-1)
            u = torch.rand(1, generator=rows[i].generator, device=logits.device) * cdf[-1]
            k = int(torch.searchsorted(cdf, u).clamp(max=cdf.numel() - 1))
            choice[i] = int(order[k]) if order is not None else k
        return choice

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
    return {c: b for b, c in bytes_to_unicode().items()}
