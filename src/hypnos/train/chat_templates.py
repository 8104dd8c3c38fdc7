"""Named chat templates for base models that ship none (Llama-2 base, Ziya), and the check ``validate`` runs.

A training stage's ``chat_template`` is a name below or a Jinja string (anything containing ``{{`` or ``{%``).
The template is set on the tokenizer before tokenizing and saved with the trained model, so later stages
and ``hypnos serve`` render chats the same way. Every template renders a chat's prefixes as prefixes of the
whole chat (``sft.tokenize_chat`` locates assistant tokens that way; tested).
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATES: dict[str, str] = {
    # OpenAI ChatML (Qwen, SmolLM2): role tags on their own lines; an answer also ends with the tokenizer's EOS
    # when that is not <|im_end|> (a Llama tokenizer), so generation stops without a custom stop string
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' }}{% if message['role'] == 'assistant' and eos_token != '<|im_end|>' %}{{ eos_token }}"
        "{% endif %}{{ '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Meta's Llama-2-chat format: [INST] ... [/INST] answer </s>, the system prompt inside the first user turn
    "llama-2": (
        "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
        "{% for message in messages %}{% if message['role'] == 'user' %}"
        "{% if loop.index0 == 0 and system %}{% set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + "
        "message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
        "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'].strip() + ' ' + eos_token }}"
        "{% endif %}{% endfor %}"
    ),
    # IDEA-CCNL Ziya-LLaMA: "<human>:question\n<bot>:answer" (model card of Ziya-LLaMA-13B)
    "ziya": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n' }}"
        "{% elif message['role'] == 'user' %}{{ '<human>:' + message['content'] + '\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '<bot>:' + message['content'] + eos_token + '\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<bot>:' }}{% endif %}"
    ),
}

FIELD_HINT = f"set `chat_template:` in the stage to one of {', '.join(CHAT_TEMPLATES)} or a Jinja string"


def is_jinja(value: str) -> bool:
    """A literal Jinja template rather than a name."""
    return "{{" in value or "{%" in value


def resolve_chat_template(value: str) -> str:
    """The Jinja text of a template name or string.

    Raises:
        ValueError: an unknown name or a Jinja string that does not compile (the message names the field).
    """
    if not is_jinja(value):
        if value not in CHAT_TEMPLATES:
            raise ValueError(f"chat_template: unknown name {value!r}; {FIELD_HINT}")
        return CHAT_TEMPLATES[value]
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment().from_string(value)
    except TemplateSyntaxError as e:
        raise ValueError(f"chat_template: the Jinja string does not compile: {e}") from None
    return value


def dir_has_chat_template(path: Path) -> bool:
    """Whether a local checkpoint/tokenizer dir ships a chat template (tokenizer_config.json or chat_template.jinja)."""
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    cfg = path / "tokenizer_config.json"
    try:
        return bool(json.loads(cfg.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def model_has_chat_template(recipe, ref: str, seen: frozenset = frozenset()) -> bool | None:
    """Whether the model a stage trains will render chats, decided before anything runs.

    ``"@stage"`` follows the chain: a stage that sets ``chat_template`` saves it with its output; otherwise its
    own ``model`` (or a tokenizer stage's ``base_model``) decides. Returns None when it cannot be known offline
    (a hub id not in the local cache): the stage then checks again when it loads the tokenizer.
    """
    from hypnos.common.models import BUILTIN_MODELS
    from hypnos.common.stage import ConfigError, is_ref

    if is_ref(ref):
        name = ref[1:].split(".")[0]
        if name in seen:
            return None
        try:
            cfg = recipe.stage(name).config
        except ConfigError:  # a missing stage is reported by the reference check
            return None
        if getattr(cfg, "chat_template", None):
            return True
        upstream = getattr(cfg, "model", None) or getattr(cfg, "base_model", None)
        return model_has_chat_template(recipe, upstream, seen | {name}) if isinstance(upstream, str) else None
    if ref in BUILTIN_MODELS:
        return True  # SmolLM2-Instruct ships ChatML
    for p in (recipe.base_dir / ref, Path(ref)):
        if p.is_dir():
            return dir_has_chat_template(p)
    if ref.count("/") == 1:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(ref, "tokenizer_config.json")
        except (OSError, ValueError):  # not a valid repo id / unreadable cache: cannot tell
            return None
        if isinstance(cached, str):
            return dir_has_chat_template(Path(cached).parent)
    return None
