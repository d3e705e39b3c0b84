"""The remote tier backend: any OpenAI-compatible vLLM server (``vllm serve``) as a tier.

The large model of a cascade can live on its own machines — ``vllm serve`` with tensor or
pipeline parallelism, on Ray across nodes — while the small one runs in-process. Requests
go through the official ``openai`` async client: chat requests to ``/v1/chat/completions``
with ``logprobs`` / ``top_logprobs``, plain prompts to ``/v1/completions`` with
``logprobs: k``; the response's token logprobs and top-k alternatives become the same
``Chunk``s and ``TierResult`` an in-process engine gives, so every signal, the calibration
job and ``vcascade evaluate`` work unchanged. Semantic-entropy samples use ``n``.

Faults: the client retries connection errors, timeouts, 408/409/429 and 5xx with capped
exponential backoff and jitter (the ``openai`` client's own policy: 0.5 s doubling to at
most 8 s, honouring ``Retry-After``), up to ``max_retries`` times; after that the request
fails with ``TierUnavailableError`` naming the tier and the endpoint. A 400 from the
remote is the request's fault and is passed on as ``RequestError``. At start-up the
remote must serve the model and return logprobs, or the tier is refused with the reason.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator

from ..config import RemoteTierConfig
from ..errors import RequestError, TierUnavailableError
from ..types import Request, Sample
from .base import Chunk, Decoding
from .rendering import chat_messages


class RemoteTierError(ValueError):
    """A remote tier that cannot be used (unreachable, model not served, no logprobs)."""


class RemoteBackend:
    """One model on an OpenAI-compatible server; ``await start()`` checks it before use."""

    def __init__(self, config: RemoteTierConfig, system_prompt: str | None):
        import openai

        self.config = config
        self.name = config.name
        self.endpoint = config.endpoint.rstrip("/")
        self.system_prompt = system_prompt
        api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        if config.api_key_env and not api_key:
            raise RemoteTierError(f"tier {self.name}: environment variable {config.api_key_env} "
                                  "(api_key_env) is not set")
        self.client = openai.AsyncOpenAI(base_url=self.endpoint, api_key=api_key or "EMPTY",
                                         timeout=config.timeout_s, max_retries=config.max_retries)
        self.limit = asyncio.Semaphore(config.max_concurrency)
        self.max_model_len = 0
        self.served_model = config.model

    def identity(self) -> dict[str, Any]:
        """What a calibration artifact pins: the served model id, its context length and the
        stated revision — not the URL, which may move."""
        return {"backend": "remote", "served_model": self.served_model, "max_model_len": self.max_model_len,
                "model_revision": self.config.model_revision}

    async def start(self) -> None:
        """Refuse a remote that does not serve ``model`` or returns no logprobs."""
        import openai

        try:
            models = await self.client.models.list()
        except openai.APIError as err:
            raise RemoteTierError(f"tier {self.name}: cannot list models at {self.endpoint}: {_reason(err)}") from None
        served = {m.id: m for m in models.data}
        if self.config.model not in served:
            raise RemoteTierError(f"tier {self.name}: {self.endpoint} does not serve model {self.config.model!r}; "
                                  f"it serves {', '.join(served) or 'nothing'}")
        card = served[self.config.model]
        self.max_model_len = int((card.model_extra or {}).get("max_model_len") or 0)
        k = self.config.sampling.logprobs
        try:
            probe = await self.client.chat.completions.create(
                model=self.config.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                temperature=0.0, logprobs=True, top_logprobs=k)
        except openai.BadRequestError as err:
            raise RemoteTierError(f"tier {self.name}: {self.endpoint} refuses logprobs with top_logprobs={k} "
                                  f"({_reason(err)}); start vllm serve with --max-logprobs >= {k}") from None
        except openai.APIError as err:
            raise RemoteTierError(f"tier {self.name}: {self.endpoint} failed a probe request: {_reason(err)}") from None
        content = probe.choices[0].logprobs.content if probe.choices and probe.choices[0].logprobs else None
        if not content or (k > 0 and not content[0].top_logprobs):
            raise RemoteTierError(f"tier {self.name}: {self.endpoint} returns no token logprobs (not a vLLM server, "
                                  "or logprobs disabled); vcascade's signals need them")

    def _arguments(self, request: Request, decoding: Decoding, n: int = 1) -> dict[str, Any]:
        args: dict[str, Any] = dict(model=self.config.model, max_tokens=decoding.max_tokens,
                                    temperature=decoding.temperature, top_p=decoding.top_p, n=n)
        if decoding.stop:
            args["stop"] = list(decoding.stop)
        if decoding.seed is not None:
            args["seed"] = decoding.seed
        if request.raw:
            args.update(prompt=request.prompt, logprobs=decoding.logprobs)
        else:
            args.update(messages=chat_messages(request, self.system_prompt), logprobs=True,
                        top_logprobs=decoding.logprobs)
        return args

    async def stream(self, request: Request, decoding: Decoding) -> AsyncIterator[Chunk]:
        """The answer's new tokens as the remote streams them; closing the iterator closes the
        HTTP response (vLLM aborts the request on disconnect)."""
        args = self._arguments(request, decoding)
        api = self.client.completions if request.raw else self.client.chat.completions
        async with self.limit:
            stream = await self._call(api.create(**args, stream=True, stream_options={"include_usage": True}))
            try:
                async for event in _guard(stream, self):
                    chunk = _completion_chunk(event) if request.raw else _chat_chunk(event)
                    if chunk is not None:
                        yield chunk
            finally:
                await stream.close()

    async def sample(self, request: Request, decoding: Decoding, n: int) -> list[Sample]:
        args = self._arguments(request, decoding, n=n)
        if request.raw:
            args["logprobs"] = 1
        else:
            args["top_logprobs"] = 0
        api = self.client.completions if request.raw else self.client.chat.completions
        async with self.limit:
            response = await self._call(api.create(**args))
        samples = []
        for choice in response.choices:
            if request.raw:
                text, lps = choice.text, list(choice.logprobs.token_logprobs if choice.logprobs else [])
            else:
                text = choice.message.content or ""
                lps = [t.logprob for t in (choice.logprobs.content if choice.logprobs else None) or []]
            samples.append(Sample(text, [], [float(v) for v in lps], float(sum(lps))))
        return samples

    async def _call(self, awaitable):
        """Await a client call (its retries included), mapping failures to engine errors."""
        import openai

        try:
            return await awaitable
        except openai.BadRequestError as err:
            body = err.body if isinstance(err.body, dict) else {}
            raise RequestError(f"tier {self.name}: {_reason(err)}", param=body.get("param")) from None
        except openai.APIError as err:
            raise self._unavailable(err) from None

    def _unavailable(self, err) -> TierUnavailableError:
        import openai

        status = 503 if isinstance(err, (openai.APIConnectionError, openai.RateLimitError)) else 502
        retries = f" after {self.config.max_retries} retries" if self.config.max_retries else ""
        return TierUnavailableError(f"tier {self.name} ({self.endpoint}) failed{retries}: {_reason(err)}",
                                    tier=self.name, status=status)

    def check_health(self) -> None:
        """Remote health is checked per request (retries, then a clear error)."""

    async def shutdown(self) -> None:
        await self.client.close()


async def _guard(stream, backend: RemoteBackend):
    """Iterate a response stream, mapping a failure mid-stream to ``TierUnavailableError``."""
    import openai

    try:
        async for event in stream:
            yield event
    except (openai.APIError, ValueError) as err:
        raise backend._unavailable(err if isinstance(err, openai.APIError) else
                                   openai.APIConnectionError(message=str(err), request=None)) from None


def _reason(err) -> str:
    import openai

    if isinstance(err, openai.APIStatusError):
        body = err.body if isinstance(err.body, dict) else {}
        return f"HTTP {err.status_code}: {body.get('message') or err.message}"
    return str(err) or type(err).__name__


def _chat_chunk(event) -> Chunk | None:
    if not event.choices:
        if event.usage is not None:
            return Chunk(prompt_tokens=event.usage.prompt_tokens)
        return None
    choice = event.choices[0]
    content = (choice.logprobs.content if choice.logprobs else None) or []
    return Chunk(
        text=choice.delta.content or "",
        tokens=[t.token for t in content],
        token_logprobs=[float(t.logprob) for t in content],
        top_logprobs=[[(a.token, float(a.logprob)) for a in t.top_logprobs] for t in content],
        finish_reason=choice.finish_reason,
        prompt_tokens=event.usage.prompt_tokens if event.usage else None,
    )


def _completion_chunk(event) -> Chunk | None:
    if not event.choices:
        if event.usage is not None:
            return Chunk(prompt_tokens=event.usage.prompt_tokens)
        return None
    choice = event.choices[0]
    lp = choice.logprobs
    tokens = list(lp.tokens or []) if lp else []
    top = [sorted(((t, float(v)) for t, v in (alt or {}).items()), key=lambda p: -p[1])
           for alt in (lp.top_logprobs or [])] if lp else []
    return Chunk(
        text=choice.text or "",
        tokens=tokens,
        token_logprobs=[float(v) for v in (lp.token_logprobs or [])] if lp else [],
        top_logprobs=top,
        finish_reason=choice.finish_reason,
        prompt_tokens=event.usage.prompt_tokens if event.usage else None,
    )
