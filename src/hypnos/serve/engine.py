"""The generation engine behind ``hypnos serve``: one model, one worker thread, batched decoding.

Requests are queued from the asyncio side. The worker takes the first one, waits ``batch_window_s`` for
more, left-pads the prompts into one batch and decodes them together with a KV cache, one token per step
for every row. Requests that arrive while a batch runs join it between two steps, so the batch stays full
under a steady stream of requests instead of waiting for its slowest row. Rows leave the batch as they
finish (EOS, a stop string, ``max_tokens``, the grammar is complete, or the client went away).

Bounded per-step cost, however long the server runs:

- After every join and every removal, the KV-cache and mask columns that every row masks out (left
  padding nobody needs any more) are dropped, so the width is the longest live row, never the history of
  the batch (issue 15 #5: width 40 -> 374 over 335 steps without this).
- Prompts are prefilled at most ``prefill_chunk`` tokens per step: a long prompt is fed in chunks between
  decode steps of the running rows instead of stalling them for one huge forward pass.

Each row samples with its own parameters: temperature 0 is greedy; otherwise temperature + top-p, drawn
with the Gumbel-max trick (argmax of logits/T minus the log of Exp(1) noise) from a ``torch.Generator``
owned by the request and seeded from its ``seed``: the request's random draws never depend on its
batch-mates (tests/test_serve_robust.py runs 12 seeded requests alone and among 12 strangers and gets the
same text). What batching can still change is the logits themselves, by float noise (~1e-6: padding and
batch size change the order of additions); Gumbel-max then picks a different token only when the two best
perturbed scores are that close, where inverse-CDF sampling also flips when the draw falls that close to
a boundary of a float32 cumulative sum over 49k probabilities, whose rounding the noise changes. So a
seeded request is reproducible up to such rare ties, not bit for bit; greedy decoding likewise.

Structured outputs: a request may carry a llguidance matcher (``SamplingParams.grammar``); each row gets
its own copy and tokens the grammar forbids are masked out before sampling. The row ends when the grammar
is complete.

Text is released to the caller incrementally: never half of a UTF-8 character (byte-level BPE splits
Chinese characters into single-byte tokens) and never text that could still turn out to start a stop
string. Log-probabilities are those of the model itself (log-softmax of the raw logits, before grammar
masks, temperature and top-p), as in the OpenAI API.
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
from hypnos.serve.grammar import GrammarCompiler, allowed_mask
from hypnos.tokenizer.extend import bytes_to_unicode

log = logging.getLogger(__name__)


class EngineShuttingDown(RuntimeError):
    """The engine stopped before this request could start."""


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
    grammar: Any = None
    """A llguidance ``LLMatcher`` at its start state (``Engine.compile_grammar``); copied for each row."""


@dataclass
class TokenInfo:
    """One generated token with its log-probability and the most likely alternatives."""

    id: int
    token: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]
    """(token, bytes, logprob) of the ``top_logprobs`` most likely tokens, best first."""
    offset: int = 0
    """Character offset in the choice's text where this token's text starts (a token holding only part
    of a UTF-8 character points at that character)."""


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
    generator: torch.Generator | None = None

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
    matcher: Any = None
    ids: list[int] = field(default_factory=list)
    infos: list[TokenInfo] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # char offset where each token's text ends
    stable: int = 0  # length of the text without a trailing incomplete UTF-8 character
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


@dataclass
class _Chunked:
    """A long prompt being prefilled a chunk per step (one row; copied to ``n`` rows when complete)."""

    job: _Job
    cache: Any = None
    done: int = 0


def _plain(cache) -> bool:
    """Only plain dynamic layers can be left-padded, joined and trimmed (no sliding windows)."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _merge(a: _Batch | None, b: _Batch | None) -> _Batch | None:
    """Join two batches after a forward step, left-padding the shorter KV cache and mask with masked zeros."""
    if a is None or b is None:
        return a or b
    width = max(a.mask.shape[1], b.mask.shape[1])
    pad_a, pad_b = width - a.mask.shape[1], width - b.mask.shape[1]
    for la, lb in zip(a.cache.layers, b.cache.layers):
        la.keys = torch.cat([F.pad(la.keys, (0, 0, pad_a, 0)), F.pad(lb.keys, (0, 0, pad_b, 0))])
        la.values = torch.cat([F.pad(la.values, (0, 0, pad_a, 0)), F.pad(lb.values, (0, 0, pad_b, 0))])
    a.mask = torch.cat([F.pad(a.mask, (pad_a, 0)), F.pad(b.mask, (pad_b, 0))])
    a.positions = torch.cat([a.positions[:, -1:], b.positions[:, -1:]])
    a.rows += b.rows
    return a


def _trim(batch: _Batch) -> None:
    """Drop leading KV/mask columns that every row masks out (rows are left padded, so all are leading)."""
    if not _plain(batch.cache):
        return
    used = batch.mask.any(0)
    first = int(used.int().argmax())  # first column some row attends to
    if first > 0:
        batch.mask = batch.mask[:, first:]
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]


class Engine:
    """Serve one causal LM: tokenisation, batched generation on a worker thread.

    Args:
        model: model reference (see ``hypnos.common.models.resolve_model``).
        device: torch device; default CUDA when available, else CPU.
        max_batch_rows: most sequences decoded together (a request with ``n`` choices takes ``n`` rows).
        batch_window_s: how long the worker waits for more requests after the first one arrives.
        prefill_chunk: most prompt tokens fed to the model per step; longer prompts are prefilled in
            chunks between decode steps of the running rows.
        max_prompt_chars: prompts longer than this (in characters) are refused before tokenizing; default
            16 characters per token of context (more than any tokenizer packs into one token on real text).
    """

    def __init__(self, model: str | os.PathLike, device: str | None = None, max_batch_rows: int = 16,
                 batch_window_s: float = 0.005, prefill_chunk: int = 256, max_prompt_chars: int | None = None):
        self.path: Path = resolve_model(model)
        self.tokenizer = load_tokenizer(self.path)
        self.model = load_causal_lm(self.path, device=device)
        self.device = self.model.device
        self.max_batch_rows, self.batch_window_s = max_batch_rows, batch_window_s
        self.prefill_chunk = max(1, prefill_chunk)
        self.context_length: int = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_prompt_chars = max_prompt_chars or 16 * self.context_length
        self.vocab_size: int = self.model.get_output_embeddings().weight.shape[0]
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._byte_level = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"
        self._byte_decoder = _byte_decoder()
        self._token_cache: dict[int, tuple[str, list[int]]] = {}
        self._grammars = GrammarCompiler(self.tokenizer, self.vocab_size, self.eos_ids)
        # prefills: prompt batches run; steps: decode forwards; tokens/steps is the mean batch size
        self.stats = {"prefills": 0, "steps": 0, "rows": 0, "tokens": 0, "seconds": 0.0}
        # what /health reports: the running batch's shape and the time of its last decode step
        self.live = {"rows": 0, "mask_width": 0, "max_mask_width": 0, "step_ms": 0.0, "prefilling": 0}
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: _Job | None = None  # taken from the queue, waiting for room in a batch
        self._batch_jobs: list[_Job] = []
        self._abort = threading.Event()
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
            if piece is None:  # an id past the tokenizer's vocabulary (the model's embedding is padded)
                raw = b""
            elif self._byte_level and all(c in self._byte_decoder for c in piece):
                raw = bytes(self._byte_decoder[c] for c in piece)
            elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # SentencePiece byte
                raw = bytes([int(piece[3:5], 16)])
            else:
                raw = piece.replace("\u2581", " ").encode()
            self._token_cache[token_id] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self._token_cache[token_id]

    def compile_grammar(self, grammar: str):
        """A matcher for a llguidance grammar (see ``hypnos.serve.grammar.grammar_for``); run it off the
        event loop: the first call builds the tokenizer's view (~0.2 s), large schemas take longer.

        Raises:
            GrammarError: the grammar is invalid.
        """
        return self._grammars.matcher(grammar)

    # ----------------------------------------------------------------------------- asyncio side
    async def generate(self, prompt_ids: list[int], params: SamplingParams, n: int = 1) -> AsyncIterator[list[Delta]]:
        """Generate ``n`` choices for one prompt; yields lists of deltas as text becomes final.

        Closing the iterator early (client disconnected) removes the request's rows from the batch.
        """
        job = _Job(prompt_ids, params, n, asyncio.get_running_loop(), asyncio.Queue())
        if self._abort.is_set():
            raise EngineShuttingDown("the server is shutting down")
        self._queue.put(job)
        try:
            while (item := await job.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled = True

    def queued(self) -> int:
        """Requests waiting for room in the batch."""
        return self._queue.qsize() + (self._held is not None)

    def health(self) -> dict[str, Any]:
        """The engine's live state: queue, batch rows, mask width, last decode step time."""
        return {"queued": self.queued(), **self.live, "steps": self.stats["steps"], "tokens": self.stats["tokens"],
                "alive": self._thread.is_alive()}

    def abort(self) -> None:
        """Finish every running row now (``finish_reason`` ``length``: the answer was cut short) and refuse
        queued and new requests; used at shutdown so streams end properly instead of being cut."""
        self._abort.set()

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
            finally:
                self.live.update(rows=0, mask_width=0, prefilling=0)

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
            if self._abort.is_set():  # shutting down: refuse what has not started
                self._held = None
                job.emit(EngineShuttingDown("the server is shutting down"))
                continue
            if room is not None and job.n > room:
                return None  # keep it for the next batch
            self._held = None
            return job

    @torch.inference_mode()
    def _run(self, jobs: list[_Job]) -> None:
        """Decode until every row is done. Each iteration prefills at most ``prefill_chunk`` prompt tokens
        (short prompts together, a long one a chunk at a time) and runs one decode step; queued requests
        are admitted between steps while there is room."""
        start = time.perf_counter()
        batch: _Batch | None = None
        waiting: list[_Job] = list(jobs)  # admitted, not prefilled yet
        chunked: _Chunked | None = None
        while True:
            waiting = [j for j in waiting if not j.cancelled]
            if self._abort.is_set():  # shutting down: what has not started decoding never will
                for j in waiting + ([chunked.job] if chunked else []):
                    j.emit(EngineShuttingDown("the server is shutting down"))
                waiting, chunked = [], None
            # short prompts first (never stuck behind a long one), as many as fit in one chunk's budget
            group, budget = [], self.prefill_chunk
            for j in waiting:
                if len(j.prompt_ids) <= budget:
                    group.append(j)
                    budget -= len(j.prompt_ids)
            if group:
                waiting = [j for j in waiting if all(j is not g for g in group)]
                batch = self._join(batch, self._prefill(group))
            elif chunked is None and waiting:  # only long prompts wait: feed the first one chunk by chunk
                chunked = _Chunked(waiting.pop(0))
            if chunked is not None and not group:
                if chunked.job.cancelled:
                    chunked = None
                else:
                    ready = self._prefill_chunk(chunked)
                    if chunked.done >= len(chunked.job.prompt_ids):  # its rows joined (or already finished)
                        batch, chunked = self._join(batch, ready), None
            if batch is not None:
                batch = self._step(batch)
            self.live.update(rows=len(batch.rows) if batch else 0, prefilling=len(waiting) + (chunked is not None))
            if batch is None and chunked is None and not waiting:
                break
            if batch is None or _plain(batch.cache):  # sliding-window caches cannot take joiners
                room = self.max_batch_rows - (len(batch.rows) if batch else 0) - sum(j.n for j in waiting) - (
                    chunked.job.n if chunked else 0)
                while room > 0 and (job := self._next_job(room=room)) is not None:
                    waiting.append(job)
                    self._batch_jobs.append(job)
                    room -= job.n
        self.stats["seconds"] += time.perf_counter() - start

    def _join(self, batch: _Batch | None, new: _Batch | None) -> _Batch | None:
        batch = _merge(batch, new)
        if batch is not None:
            _trim(batch)
        return batch

    def _rows(self, job: _Job) -> list[_Row]:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(job.params.seed % 2**63 if job.params.seed is not None else secrets.randbits(63))
        job.remaining = job.n
        g = job.params.grammar
        self.stats["rows"] += job.n
        return [_Row(job, i, gen, g.deep_copy() if g is not None else None) for i in range(job.n)]

    def _prefill(self, jobs: list[_Job]) -> _Batch | None:
        """Prefill short prompts together in one left-padded forward pass."""
        if not jobs:
            return None
        rows = [r for job in jobs for r in self._rows(job)]
        self.stats["prefills"] += 1
        width = max(len(r.job.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's next token lands in the last column
            input_ids[i, width - len(r.job.prompt_ids):] = torch.tensor(r.job.prompt_ids)
            mask[i, width - len(r.job.prompt_ids):] = 1
        mask = mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return self._forward(_Batch(rows, None, mask, positions), input_ids.to(self.device))

    def _prefill_chunk(self, c: _Chunked) -> _Batch | None:
        """Feed the next chunk of a long prompt; when the prompt is complete, its rows (sampled) as a batch."""
        ids = c.job.prompt_ids
        chunk = ids[c.done:c.done + self.prefill_chunk]
        start, c.done = c.done, c.done + len(chunk)
        mask = torch.ones((1, c.done), dtype=torch.long, device=self.device)
        positions = torch.arange(start, c.done, device=self.device).unsqueeze(0)
        out = self.model(input_ids=torch.tensor([chunk], device=self.device), attention_mask=mask,
                         position_ids=positions, past_key_values=c.cache, use_cache=True)
        c.cache = out.past_key_values
        if c.done < len(ids):
            return None
        self.stats["prefills"] += 1
        n = c.job.n
        if n > 1:
            c.cache.batch_repeat_interleave(n)
        batch = _Batch(self._rows(c.job), c.cache, mask.expand(n, -1).clone(), positions[:, -1:].expand(n, 1).clone())
        return self._after_forward(batch, out.logits[:, -1, :].float().expand(n, -1))

    def _step(self, batch: _Batch) -> _Batch | None:
        t0 = time.perf_counter()
        input_ids = torch.tensor([r.ids[-1] for r in batch.rows], device=self.device).unsqueeze(1)
        batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        batch.positions = batch.positions[:, -1:] + 1
        width = batch.mask.shape[1]
        batch = self._forward(batch, input_ids)
        self.stats["steps"] += 1
        self.live.update(mask_width=width, max_mask_width=max(self.live["max_mask_width"], width),
                         step_ms=round((time.perf_counter() - t0) * 1e3, 3))
        return batch

    def _forward(self, batch: _Batch, input_ids: torch.Tensor) -> _Batch | None:
        out = self.model(input_ids=input_ids, attention_mask=batch.mask, position_ids=batch.positions,
                         past_key_values=batch.cache, use_cache=True)
        batch.cache = out.past_key_values
        return self._after_forward(batch, out.logits[:, -1, :].float())

    def _after_forward(self, batch: _Batch, logits: torch.Tensor) -> _Batch | None:
        """Sample a token for every row, emit what became final, drop finished rows."""
        logprobs = torch.log_softmax(logits, dim=-1)
        deltas: dict[int, tuple[_Job, list[Delta]]] = {}
        aborting = self._abort.is_set()
        tokens = self._sample(self._constrain(logits, batch.rows), batch.rows)
        for i, (row, token) in enumerate(zip(batch.rows, tokens)):
            delta = self._advance(row, token, logprobs[i]) if not aborting else self._finish(row, "length", row.stable)
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
            _trim(batch)
        return batch

    def _constrain(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """Logits with the tokens each row's grammar forbids set to -inf (unchanged rows without one)."""
        constrained = [i for i, r in enumerate(rows) if r.matcher is not None]
        if not constrained:
            return logits
        allowed = allowed_mask([rows[i].matcher for i in constrained], logits.shape[-1]).to(logits.device)
        stuck = ~allowed.any(-1)  # a matcher in an error state allows nothing: let the row end, loudly
        if stuck.any():
            log.error("grammar allows no token for %d row(s); ending them", int(stuck.sum()))
            allowed[stuck, min(self.eos_ids)] = True
        logits = logits.clone()
        index = torch.tensor(constrained, device=logits.device)
        logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
        return logits

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """One token per row: greedy, or Gumbel-max sampling with the request's own generator.

        argmax(logits / T - log E), E ~ Exp(1) i.i.d., draws exactly from softmax(logits / T); top-p first
        sets the tokens outside the nucleus to -inf. A row's draws come only from its request's generator.
        """
        choice = logits.argmax(-1).tolist()
        for i, r in enumerate(rows):
            p = r.job.params
            if p.temperature <= 0 or p.top_p <= 0:
                continue
            scaled = logits[i] / p.temperature
            if p.top_p < 1.0:
                probs, order = torch.softmax(scaled, -1).sort(descending=True)
                # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
                outside = order[probs.cumsum(-1) - probs >= p.top_p]
                scaled = scaled.index_fill(0, outside, float("-inf"))
            noise = torch.empty_like(scaled).exponential_(generator=r.generator)
            choice[i] = int((scaled - noise.log()).argmax())
        return choice

    def _advance(self, row: _Row, token_id: int, logprobs: torch.Tensor) -> Delta | None:
        """Append one token to a row; return the text and tokens that became final, if any."""
        p = row.job.params
        if row.job.cancelled:
            row.done = True
            return None
        if token_id in self.eos_ids:
            return self._finish(row, "stop", len(row.text))
        info = self._token_info(token_id, logprobs, p.top_logprobs)
        info.offset = row.stable
        row.ids.append(token_id)
        row.infos.append(info)
        row.text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        row.ends.append(len(row.text))
        row.stable = len(row.text.rstrip("\ufffd"))  # never release half a UTF-8 character
        hits = [i for i in (row.text.find(s, max(0, row.sent_chars - len(s))) for s in p.stop) if i >= 0]
        if hits:
            return self._finish(row, "stop", min(hits))
        if row.matcher is not None:
            if not row.matcher.consume_token(token_id):  # cannot happen with the mask applied: say so loudly
                log.error("grammar rejected token %d: %s", token_id, row.matcher.get_error())
                return self._finish(row, "stop", row.stable)
            if row.matcher.is_stopped():  # the grammar is complete: nothing else may follow
                return self._finish(row, "stop", len(row.text))
        if len(row.ids) >= p.max_tokens:
            return self._finish(row, "length", row.stable)  # a cut-off character is dropped, not sent as U+FFFD
        safe = row.stable - max((len(s) - 1 for s in p.stop), default=0)  # nor the possible start of a stop
        if safe <= row.sent_chars:
            return None
        return self._release(row, safe, lambda i: row.ends[i] <= safe)

    def _finish(self, row: _Row, reason: str, cut: int) -> Delta:
        """End a row, releasing its text up to ``cut``: every token when cut short (``length``: the pieces of
        a cut-off character stay in the logprobs although their text is dropped), else the tokens whose
        text starts before the cut (so a token straddling a stop string is kept)."""
        row.done = True
        take = (lambda i: True) if reason == "length" else (
            lambda i: (row.ends[i - 1] if i else 0) < cut or row.ends[i] <= cut)
        delta = self._release(row, cut, take)
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
