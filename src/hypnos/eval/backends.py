"""The two kinds of model an evaluation compares: a local checkpoint run in-process, or an LLM endpoint.

Both answer the same two questions: ``generate(prompts)`` (greedy, deterministic) and, for local models
only, ``choice_logprobs(prompts, choices)`` (log-probability of each choice label as the next token).
A prompt is one user turn; it is wrapped in the model's chat template when it has one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hypnos.common.progress import bar

log = logging.getLogger("hypnos")


@dataclass
class LocalLM:
    """A causal LM in this process: batched left-padded forwards and greedy ``generate``.

    Args:
        ref: model reference (local dir, built-in name, hub id) as ``hypnos.common.models`` resolves it.
        batch_size: prompts per forward / generate call.
        chat_template: wrap prompts in the tokenizer's chat template (when it has one).
    """

    ref: str
    batch_size: int = 8
    chat_template: bool = True
    model: Any = field(init=False, repr=False)
    tok: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from hypnos.common.models import load_causal_lm, load_tokenizer

        self.tok = load_tokenizer(self.ref)
        self.tok.padding_side = "left"  # the last position of every row is then the next-token position
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = load_causal_lm(self.ref)

    def format(self, prompt: str) -> str:
        """The prompt as the model sees it: inside the chat template's user turn when there is one."""
        if self.chat_template and self.tok.chat_template:
            return self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
        return prompt

    def _encode(self, prompts: list[str]):
        texts = [self.format(p) for p in prompts]
        # the chat template already holds BOS-like markers; plain prompts get the tokenizer's specials
        add = not (self.chat_template and self.tok.chat_template)
        return self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=add).to(self.model.device)

    def choice_logprobs(self, prompts: list[str], choices: list[list[str]], desc: str = "") -> list[list[float]]:
        """Log-probability (normalised over the choices) of each choice's first token after each prompt.

        One forward per batch of prompts: option letters are single tokens, so only the next-token
        distribution at the end of the prompt is needed.
        """
        import torch

        out: dict[int, list[float]] = {}
        progress = bar(len(prompts), desc=desc or f"loglik {self.ref}", unit="q")
        for idx in self._batches(prompts):
            batch = self._encode([prompts[i] for i in idx])
            with torch.inference_mode():  # logits of the last position only: the LM head is a third of the cost
                logits = self.model(**batch, logits_to_keep=1).logits[:, -1, :].float()
            for row, i in zip(logits, idx):
                scores = row[[self.choice_token(c) for c in choices[i]]]
                out[i] = torch.log_softmax(scores, dim=-1).tolist()
            progress.update(len(idx))
        progress.close()
        return [out[i] for i in range(len(prompts))]

    def _batches(self, prompts: list[str]) -> list[list[int]]:
        """Prompt indices in batches of similar length, so little compute goes to padding."""
        lengths = [len(self.tok(self.format(p), add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def choice_token(self, choice: str) -> int:
        """The token id a choice label starts with (``"A"``, ``"1"``)."""
        ids = self.tok.encode(choice, add_special_tokens=False)
        return ids[0]

    def generate(self, prompts: list[str], max_new_tokens: int, desc: str = "") -> list[str]:
        """Greedy continuations of ``prompts`` (batched), without the prompt and special tokens."""
        import torch

        out: dict[int, str] = {}
        progress = bar(len(prompts), desc=desc or f"generate {self.ref}", unit="prompt")
        for idx in self._batches(prompts):
            batch = self._encode([prompts[i] for i in idx])
            with torch.inference_mode():
                ids = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tok.pad_token_id)
            new = ids[:, batch["input_ids"].shape[1]:]
            for i, text in zip(idx, self.tok.batch_decode(new, skip_special_tokens=True)):
                out[i] = text.strip()
            progress.update(len(idx))
        progress.close()
        return [out[i] for i in range(len(prompts))]

    def close(self) -> None:
        """Free the weights (models are evaluated one after another)."""
        del self.model


@dataclass
class EndpointLM:
    """A model behind an OpenAI-compatible endpoint, called through the stage's cached LLM client."""

    client: Any
    """``hypnos.data.clients.LLMClient`` (from ``ctx.client(name)``): answers are cached on disk."""
    name: str

    def generate(self, prompts: list[str], max_new_tokens: int, desc: str = "") -> list[str]:
        """Greedy answers (temperature 0, seed 0); a failed request gives ``""`` and a warning."""
        reqs = [{"messages": [{"role": "user", "content": p}], "temperature": 0.0, "seed": 0,
                 "max_tokens": max_new_tokens} for p in prompts]
        results = self.client.chat_many_sync(reqs, progress=True)
        for r in results:
            if r.error:
                log.warning("endpoint %s: %s", self.name, r.error)
        return [(r.text or "").strip() for r in results]

    def close(self) -> None:
        """Nothing to free."""


def is_local(model: Any) -> bool:
    """True when log-likelihoods can be computed (a local model)."""
    return isinstance(model, LocalLM)
