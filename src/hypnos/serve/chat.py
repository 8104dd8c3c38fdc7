"""``hypnos chat MODEL``: a terminal chat that streams the answer as it is generated.

Run: hypnos chat smollm2-135m-instruct        (or a checkpoint dir such as runs/demo/sft_general_to_specific/model)
     hypnos chat gpt-4o --base-url https://api.openai.com/v1 --api-key-env OPENAI_API_KEY

Local models generate in-process with transformers' ``TextIteratorStreamer``; with ``--base-url`` the
answer is streamed from any OpenAI-compatible endpoint. ``/reset`` clears the history, ``/exit`` or
end of input leaves. Input may be piped (one message per line).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from threading import Event, Thread
from typing import Annotated

import typer

DISCLAIMER = "本模型输出仅供参考，不能替代执业医师的诊断与治疗。"


def _local_stream(model_ref: str, max_new_tokens: int, temperature: float):
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    from hypnos.common.models import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(model_ref), load_causal_lm(model_ref)
    model.eval()

    class Stop(StoppingCriteria):
        """Ends generation at the next step once ``event`` is set (Ctrl-C)."""

        def __init__(self, event: Event):
            self.event = event

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)

    def stream(messages: list[dict]) -> Iterator[str]:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        stop = Event()
        kwargs = dict(**ids, max_new_tokens=max_new_tokens, streamer=streamer, pad_token_id=tok.pad_token_id,
                      stopping_criteria=StoppingCriteriaList([Stop(stop)]),
                      do_sample=temperature > 0, **({"temperature": temperature} if temperature > 0 else {}))
        thread = Thread(target=model.generate, kwargs=kwargs, daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            # Interrupted (Ctrl-C) or abandoned: stop the generation thread and wait for it. A process
            # that exits while that thread is inside a torch op aborts ("terminate called ...", 134).
            stop.set()
            thread.join()

    return stream


def _remote_stream(model: str, base_url: str, api_key_env: str | None, max_new_tokens: int, temperature: float):
    import os

    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env or "", "") or "none")

    def stream(messages: list[dict]) -> Iterator[str]:
        for chunk in client.chat.completions.create(model=model, messages=messages, stream=True,
                                                    max_tokens=max_new_tokens, temperature=temperature):
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    return stream


def chat(
    model: Annotated[str, typer.Argument(help="model ref (dir, built-in name) or, with --base-url, a model name")],
    base_url: Annotated[str | None, typer.Option(help="chat with an OpenAI-compatible endpoint instead")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="env var holding the endpoint's API key")] = None,
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
) -> None:
    """Chat with a model in the terminal; answers stream as they are generated."""
    stream = (_remote_stream(model, base_url, api_key_env, max_new_tokens, temperature) if base_url
              else _local_stream(model, max_new_tokens, temperature))
    interactive = sys.stdin.isatty()
    print(f"[{model}] {DISCLAIMER}  (/reset clears the history, /exit leaves)", file=sys.stderr)
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = input("你: " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:  # Ctrl-C at the prompt leaves, as shells do
            print(file=sys.stderr)
            raise typer.Exit(130) from None
        line = line.strip()
        if not line:
            continue
        if line == "/exit":
            break
        if line == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": line})
        print("助手: ", end="", flush=True)
        answer = ""
        try:
            with contextlib.closing(stream(history)) as pieces:
                for piece in pieces:
                    answer += piece
                    print(piece, end="", flush=True)
        except KeyboardInterrupt:  # Ctrl-C mid-answer stops that answer; the chat goes on
            print(flush=True)
            print("[interrupted]", file=sys.stderr, flush=True)
            history.pop()
            continue
        print(flush=True)
        history.append({"role": "assistant", "content": answer})
