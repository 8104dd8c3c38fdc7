"""Shared fixtures. Keep each one small and documented; group them by topic.

Models and servers:
- ``tiny_model_dir``: a random 2-layer LlamaForCausalLM with the real SmolLM2 tokenizer and its ChatML chat
  template (built once per session, ~5 s, mostly loading the tokenizer from the GGUF).
- ``llama_sp_dir``: the same tiny model shape with the shared LLaMA SentencePiece tokenizer (skips without it).
- ``smollm2_dir``: the embedded SmolLM2-135M-Instruct checkpoint, prepared in the shared cache
  (``$HYPNOS_CACHE`` or ``~/.cache/hypnos``): ~20 s the first time on a machine, ~1 s afterwards.
- ``serve_model``: ``with serve_model(model_dir) as base_url:`` runs the real ``hypnos serve`` app on a free
  loopback port in a background thread; ``base_url`` ends in ``/v1`` (what ``openai.OpenAI`` wants).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# ------------------------------------------------------------------------------------------- shared data
# The real public data sits next to the checkout (../shared/data) or wherever $HYPNOS_DATA points; never
# name it by an absolute machine path (tests/test_portability.py greps for that).
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HYPNOS_DATA") or ROOT.parent / "shared" / "data")


def shared_data(*parts: str) -> Path:
    """A path under the shared data; skips the calling test, saying where it looked, when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data {'/'.join(parts) or '.'} not found under {SHARED_DATA} "
                    "(put it at ../shared/data next to the checkout, or set HYPNOS_DATA)")
    return p


def needs_shared_data(*parts: str) -> pytest.MarkDecorator:
    """``@needs_shared_data("tokenizers", "llama")``: skip with a clear reason when that shared path is absent."""
    return pytest.mark.skipif(not SHARED_DATA.joinpath(*parts).exists(),
                              reason=f"shared data {'/'.join(parts)} not found under {SHARED_DATA} "
                                     "(put it at ../shared/data next to the checkout, or set HYPNOS_DATA)")


# Tests never reach the network; a model that is not local fails fast instead of hanging on a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HYPNOS_NO_PROGRESS", "1")
# Tests train in fp32 whatever the CPU, so their figures do not depend on the machine's bf16 support; the bf16
# autocast path (on by default on CPUs with avx512_bf16/AMX) is tested on purpose in test_train_sft.py.
os.environ.setdefault("HYPNOS_CPU_BF16", "0")


# ------------------------------------------------------------------------------------ models and servers
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM (hidden 16, 2 layers, context 1024) with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from hypnos.common.models import builtin_gguf_path

    gguf = builtin_gguf_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        # wider than the default 0.02 so the next-token distribution is peaked: greedy choices are then
        # robust to the float noise of batching, and sampled text is not pure noise
        initializer_range=0.5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def llama_sp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM with the shared LLaMA SentencePiece tokenizer (32,000 pieces, no chat
    template); skips when ../shared/data (or $HYPNOS_DATA) lacks it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hypnos.tokenizer.extend import extend_sentencepiece

    sp = shared_data("tokenizers", "llama", "tokenizer.model").parent
    out = tmp_path_factory.mktemp("tiny-llama-sp")
    extend_sentencepiece(sp, [], out)  # no new pieces: the HF files of the original model
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=0))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def eos_prone_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with extra end-of-sequence ids: the tokens it samples most often (models may have several,
    e.g. Llama-3), so it ends some answers within a few tokens and rejection sampling has complete answers."""
    from collections import Counter

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "全麻醒来后嗓子疼正常吗？"}], tokenize=False,
                                   add_generation_prompt=True)
    enc = tok([text], return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    gen = model.generate(**enc, do_sample=True, max_new_tokens=8, num_return_sequences=32, pad_token_id=tok.pad_token_id)
    frequent = [t for t, _ in Counter(gen[:, enc["input_ids"].shape[1]:].flatten().tolist()).most_common(40)]
    model.generation_config.eos_token_id = [tok.eos_token_id, *frequent]
    out = tmp_path_factory.mktemp("eos-prone")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted once into the shared cache and reused."""
    from hypnos.common.models import prepare_builtin

    return prepare_builtin("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def serve_model() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with serve_model(model_dir, name=None, api_key=None, **app_kwargs) as base_url: ...``.

    Serves one model under ``name`` (default: the dir's name); ``app_kwargs`` go to ``create_app``.
    """
    from hypnos.serve.app import run_server

    @contextlib.contextmanager
    def _serve(model_dir: str | Path, name: str | None = None, api_key: str | None = None,
               **app_kwargs) -> Iterator[str]:
        with run_server({name or Path(model_dir).name: str(model_dir)}, api_key=api_key, **app_kwargs) as url:
            yield url

    return _serve
