"""The two kinds of model an evaluation compares: a local checkpoint run in-process, or an LLM endpoint.

Both answer ``generate(prompts)`` (greedy, deterministic); local models also give ``loglik`` and
``choice_logprobs(prompts, choices)``: the log-likelihood of the whole continuation (target delimiter +
choice text) after the prompt, as lm-evaluation-harness scores ``multiple_choice`` tasks, so the same item
has the same target on every tokenizer family.
A prompt is one user turn; it is wrapped in the model's chat template when it has one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hypnos.common.progress import bar

log = logging.getLogger("hypnos")


class ChoiceCollisionError(ValueError):
    """Two answer choices of one item are the same token sequence: they cannot be told apart."""


def _tensor(ids: list[int]):
    import torch

    return torch.tensor(ids, dtype=torch.long)


@dataclass
class LocalLM:
    """A causal LM in this process: batched left-padded forwards and greedy ``generate``.

    Args:
        ref: model reference (local dir, built-in name, hub id) as ``hypnos.common.models`` resolves it.
        batch_size: prompts per forward / generate call.
        chat_template: wrap prompts in the tokenizer's chat template (when it has one).
        repetition_penalty: HF ``generate``'s penalty on tokens already in the prompt or answer (1.0: off).
        no_repeat_ngram_size: HF ``generate`` never repeats an n-gram of this many tokens (0: off).
        bf16_generate: open answers generated under bf16 autocast (fp32 weights); log-likelihoods stay fp32.
    """

    ref: str
    batch_size: int = 8
    chat_template: bool = True
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bf16_generate: bool = False
    model: Any = field(init=False, repr=False)
    tok: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from hypnos.common.models import load_causal_lm, load_tokenizer

        self.tok = load_tokenizer(self.ref)
        self.tok.padding_side = "left"  # the last position of every row is then the next-token position
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = load_causal_lm(self.ref)

    def format(self, prompt: str | list[dict]) -> str:
        """The prompt as the model sees it: inside the chat template's user turn when there is one.

        A list of chat messages (a dialogue history) goes through the chat template as is; without one,
        its turns are written ``用户：…`` / ``助手：…`` and end with ``助手：``.
        """
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if self.chat_template and self.tok.chat_template:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if isinstance(prompt, str):
            return prompt
        names = {"user": "用户", "assistant": "助手", "system": "系统"}
        return "".join(f"{names[m['role']]}：{m['content']}\n" for m in messages) + "助手："

    def _encode(self, prompts: list[str]):
        texts = [self.format(p) for p in prompts]
        # the chat template already holds BOS-like markers; plain prompts get the tokenizer's specials
        add = not (self.chat_template and self.tok.chat_template)
        return self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=add).to(self.model.device)

    def _ids(self, text: str) -> list[int]:
        # the chat template already holds BOS-like markers; plain prompts get the tokenizer's specials
        add = not (self.chat_template and self.tok.chat_template)
        return self.tok(text, add_special_tokens=add)["input_ids"]

    def continuation_ids(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of a prompt (formatted) and of a continuation after it, split as lm-eval does.

        The whole string is encoded once and the context's own encoding length cut off, so the
        continuation gets the tokens it really has after this context (SentencePiece's ``▁A``,
        byte-level ``ĠA``); trailing spaces of the context move to the continuation first.
        """
        ctx = self.format(context)
        spaces = len(ctx) - len(ctx.rstrip(" "))
        if spaces:
            ctx, continuation = ctx[:-spaces], ctx[-spaces:] + continuation
        ctx_ids = self._ids(ctx)
        whole = self._ids(ctx + continuation)
        return ctx_ids, whole[len(ctx_ids):]

    def loglik(self, requests: list[tuple[str, str]], desc: str = "") -> list[float]:
        """Sum of log-probabilities of each continuation's tokens given its context (lm-eval ``loglikelihood``).

        Requests that need the same forward (same context, one-token continuations such as option letters)
        share it, so a 4-option question costs one forward, not four.
        """
        pairs = [self.continuation_ids(c, x) for c, x in requests]
        for (c, x), (_, cont) in zip(requests, pairs):
            if not cont:
                raise ValueError(f"{desc}: continuation {x!r} encodes to no token after its context")
        inputs: dict[tuple[int, ...], list[int]] = {}  # forward input -> request indices scored from it
        for i, (ctx, cont) in enumerate(pairs):
            inputs.setdefault(tuple(ctx + cont[:-1]), []).append(i)
        out: dict[int, float] = {}
        keys = sorted(inputs, key=len, reverse=True)
        progress = bar(len(keys), desc=desc or f"loglik {self.ref}", unit="fwd")
        for b in range(0, len(keys), self.batch_size):
            batch = keys[b : b + self.batch_size]
            logps = self._last_logprobs(batch, max(len(pairs[i][1]) for k in batch for i in inputs[k]))
            for k, lp in zip(batch, logps):
                for i in inputs[k]:
                    cont = pairs[i][1]
                    rows = lp[lp.shape[0] - len(cont):]  # position t predicts token t + 1
                    out[i] = float(rows.gather(1, _tensor(cont)[:, None]).sum())
            progress.update(len(batch))
        progress.close()
        return [out[i] for i in range(len(requests))]

    def _last_logprobs(self, seqs: list[tuple[int, ...]], n_last: int):
        """Log-softmax over the vocabulary at the last ``n_last`` positions of each sequence (left-padded)."""
        import torch

        width = max(map(len, seqs))
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in seqs], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift absolute positions
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=n_last).logits.float()
        return [torch.log_softmax(row, dim=-1).cpu() for row in logits]

    def choice_logprobs(self, prompts: list[str], choices: list[list[str]], delimiter: str = " ",
                        desc: str = "") -> list[list[float]]:
        """Log-likelihood of ``delimiter + choice`` after each prompt, for every choice (lm-eval ``acc``).

        Raises:
            ChoiceCollisionError: two choices of one prompt are the same token sequence after it (their
                scores would be equal and argmax would silently pick the first).
        """
        requests, owner = [], []
        for i, (p, ch) in enumerate(zip(prompts, choices)):
            seen: dict[tuple[int, ...], str] = {}
            for c in ch:
                cont = tuple(self.continuation_ids(p, delimiter + c)[1])
                if cont in seen:
                    raise ChoiceCollisionError(
                        f"{desc or 'task'}: choices {seen[cont]!r} and {c!r} of item {i} tokenize to the same "
                        f"sequence {list(cont)} with {self.ref}'s tokenizer; their scores cannot differ")
                seen[cont] = c
                requests.append((p, delimiter + c))
                owner.append(i)
        scores = self.loglik(requests, desc=desc)
        out: list[list[float]] = [[] for _ in prompts]
        for i, s in zip(owner, scores):
            out[i].append(s)
        return out

    def _batches(self, prompts: list[str]) -> list[list[int]]:
        """Prompt indices in batches of similar length, so little compute goes to padding."""
        lengths = [len(self.tok(self.format(p), add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def generate(self, prompts: list[str] | list[list[dict]], max_new_tokens: int, desc: str = "") -> list[str]:
        """Greedy continuations of ``prompts`` (or of chat histories, batched), without prompt and specials."""
        import torch

        out: dict[int, str] = {}
        progress = bar(len(prompts), desc=desc or f"generate {self.ref}", unit="prompt")
        for idx in self._batches(prompts):
            batch = self._encode([prompts[i] for i in idx])
            with torch.inference_mode(), torch.autocast(self.model.device.type, dtype=torch.bfloat16,
                                                        enabled=self.bf16_generate):
                ids = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tok.pad_token_id, **self.decoding())
            new = ids[:, batch["input_ids"].shape[1]:]
            for i, text in zip(idx, self.tok.batch_decode(new, skip_special_tokens=True)):
                out[i] = text.strip()
            progress.update(len(idx))
        progress.close()
        return [out[i] for i in range(len(prompts))]

    def decoding(self) -> dict:
        """The non-default anti-repetition settings passed to ``generate`` (still greedy, deterministic)."""
        return decoding_kwargs(self.repetition_penalty, self.no_repeat_ngram_size)

    def close(self) -> None:
        """Free the weights (models are evaluated one after another)."""
        del self.model


@dataclass
class EndpointLM:
    """A model behind an OpenAI-compatible endpoint, called through the stage's cached LLM client."""

    client: Any
    """``hypnos.data.clients.LLMClient`` (from ``ctx.client(name)``): answers are cached on disk."""
    name: str

    def generate(self, prompts: list[str] | list[list[dict]], max_new_tokens: int, desc: str = "") -> list[str]:
        """Greedy answers (temperature 0, seed 0) to prompts or chat histories; a failed request gives ``""``."""
        reqs = [{"messages": p if isinstance(p, list) else [{"role": "user", "content": p}], "temperature": 0.0,
                 "seed": 0, "max_tokens": max_new_tokens} for p in prompts]
        results = self.client.chat_many_sync(reqs, progress=True)
        for r in results:
            if r.error:
                log.warning("endpoint %s: %s", self.name, r.error)
        return [(r.text or "").strip() for r in results]

    def close(self) -> None:
        """Nothing to free."""


def decoding_kwargs(repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0) -> dict:
    """HF ``generate`` kwargs of the anti-repetition settings that are not at their default (off)."""
    out: dict = {}
    if repetition_penalty != 1.0:
        out["repetition_penalty"] = repetition_penalty
    if no_repeat_ngram_size:
        out["no_repeat_ngram_size"] = no_repeat_ngram_size
    return out


def is_local(model: Any) -> bool:
    """True when log-likelihoods can be computed (a local model)."""
    return isinstance(model, LocalLM)
