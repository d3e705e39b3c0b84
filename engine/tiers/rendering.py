"""How a request becomes model input — the one place that decides it, for every tier.

* ``chat_messages`` — the chat turns a tier answers: a ``prompt`` becomes one user turn;
  the config's system prompt goes first unless the request brings its own system turn.
  Remote tiers send these turns (the server applies its chat template).
* ``prompt_token_ids`` — in-process tiers render the turns with the model's chat
  template and tokenize; a ``raw`` prompt (completion style) is tokenized as plain text,
  and so is a ``prompt`` for a model without a chat template.
"""

from __future__ import annotations

from ..errors import RequestError
from ..types import Request


def chat_messages(request: Request, system_prompt: str | None) -> list[dict[str, str]]:
    """The request's chat turns with the system prompt first (shape: [{role, content}, ...])."""
    messages = [dict(m) for m in (request.messages or ({"role": "user", "content": request.prompt},))]
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def has_chat_template(tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def prompt_token_ids(tokenizer, request: Request, system_prompt: str | None, tier: str = "") -> list[int]:
    """Token ids of the prompt: chat template for chat requests, plain text when raw."""
    template = has_chat_template(tokenizer)
    if request.raw or (request.prompt is not None and not template):
        return list(tokenizer.encode(request.prompt))
    if not template:
        raise RequestError(f"tier {tier}: the model has no chat template; send a plain completion prompt",
                           param="messages")
    try:
        text = tokenizer.apply_chat_template(chat_messages(request, system_prompt), add_generation_prompt=True,
                                             tokenize=False)
    except Exception as err:  # the template refuses these turns (jinja2's raise_exception, e.g. role order)
        if not any(cls.__name__ == "TemplateError" for cls in type(err).__mro__):
            raise
        raise RequestError(f"tier {tier}: the model's chat template refused the messages: {err}",
                           param="messages") from None
    return encode(tokenizer, text)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text``, no special tokens added: straight through a fast tokenizer's
    Rust backend (the same ids; the transformers wrapper around it costs a third more per
    prompt), else the tokenizer's ``encode``."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and callable(getattr(backend, "encode", None)):
        return backend.encode(text, add_special_tokens=False).ids
    return list(tokenizer.encode(text, add_special_tokens=False))
