"""The LLM backend: any OpenAI-compatible chat server (OpenAI, llama.cpp, vLLM, Ollama, ...).

Every provider failure is raised as `ProviderError`, whose message is one readable sentence
(what failed, where, and the server's own message), never a repr.
"""

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import openai
from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionStreamOptionsParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
)
from openai.types.completion_usage import CompletionUsage

from services.generator.prompting import ChatMessage
from services.generator.settings import GeneratorSettings
from shared.contracts.answers import Usage
from shared.errors import TransientError

_MESSAGE_CHARS = 300
_STATUS_PREFIX = re.compile(r"^Error code: \d+(?: - )?")


class ProviderError(TransientError):
    """The chat server could not produce a completion."""


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    usage: Usage | None
    """None when the server reported no token counts."""


def _usage(usage: CompletionUsage | None) -> Usage | None:
    if usage is None:
        return None
    return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


def _params(messages: Sequence[ChatMessage]) -> list[ChatCompletionMessageParam]:
    params: list[ChatCompletionMessageParam] = []
    for message in messages:
        content = message["content"]
        if message["role"] == "system":
            params.append(ChatCompletionSystemMessageParam(role="system", content=content))
        else:
            params.append(ChatCompletionUserMessageParam(role="user", content=content))
    return params


class ChatStream:
    """Async iterator of text deltas; `model` and `usage` are known once it is exhausted."""

    def __init__(self, backend: "ChatBackend", messages: Sequence[ChatMessage]) -> None:
        self._backend = backend
        self._messages = messages
        self.model = ""
        self.usage: Usage | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        backend = self._backend
        settings = backend.settings
        options: ChatCompletionStreamOptionsParam | openai.Omit = (
            {"include_usage": True} if settings.stream_usage else openai.omit
        )
        try:
            stream = await backend.client.chat.completions.create(
                model=settings.model,
                messages=_params(self._messages),
                temperature=settings.temperature,
                max_tokens=settings.max_tokens,
                stream=True,
                stream_options=options,
            )
            async with stream:
                async for chunk in stream:
                    self.model = chunk.model or self.model
                    self.usage = _usage(chunk.usage) or self.usage
                    for choice in chunk.choices:
                        if choice.index == 0 and choice.delta.content:
                            yield choice.delta.content
        except openai.OpenAIError as exc:
            raise ProviderError(backend.describe(exc)) from exc


class ChatBackend:
    """One `openai.AsyncOpenAI` client (and its connection pool); create once per process."""

    def __init__(self, settings: GeneratorSettings, client: openai.AsyncOpenAI | None = None):
        self.settings = settings
        self.client = client or openai.AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key.get_secret_value(),
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )

    async def complete(self, messages: Sequence[ChatMessage]) -> Completion:
        """One non-streamed completion."""
        settings = self.settings
        try:
            response = await self.client.chat.completions.create(
                model=settings.model,
                messages=_params(messages),
                temperature=settings.temperature,
                max_tokens=settings.max_tokens,
            )
        except openai.OpenAIError as exc:
            raise ProviderError(self.describe(exc)) from exc
        if not response.choices:
            raise ProviderError(f"the server at {self.client.base_url} returned no choices")
        text = response.choices[0].message.content or ""
        return Completion(text=text, model=response.model, usage=_usage(response.usage))

    def stream(self, messages: Sequence[ChatMessage]) -> ChatStream:
        """A streamed completion; iterate it for text deltas."""
        return ChatStream(self, messages)

    async def aclose(self) -> None:
        await self.client.close()

    def describe(self, exc: openai.OpenAIError) -> str:
        """A one-line description of a provider failure."""
        where = str(self.client.base_url)
        if isinstance(exc, openai.APITimeoutError):
            text = f"timed out after {self.settings.timeout_s:g}s at {where}"
        elif isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            detail = f" ({cause})" if cause is not None and str(cause) else ""
            text = f"cannot connect to {where}{detail}"
        elif isinstance(exc, openai.APIStatusError):
            detail = _STATUS_PREFIX.sub("", exc.message)
            text = f"HTTP {exc.status_code} from {where}" + (f": {detail}" if detail else "")
        else:
            text = f"{type(exc).__name__} from {where}: {exc}"
        return " ".join(text.split())[:_MESSAGE_CHARS]
