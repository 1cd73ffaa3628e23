"""Generator settings (`RAG_GENERATOR_*`): which backend answers, and when to abstain."""

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.stage_settings import StageSettings


class GeneratorSettings(StageSettings):
    """How answers are generated.

    `backend` defaults to `extractive` (no LLM, deterministic). When it is not set explicitly
    but `base_url` is, the backend becomes `openai`: pointing the generator at a server is
    enough to use it. An explicit `RAG_GENERATOR_BACKEND=extractive` always wins.
    """

    model_config = SettingsConfigDict(env_prefix="RAG_GENERATOR_", extra="ignore")

    backend: Literal["extractive", "openai"] = Field(
        default="extractive",
        description="`extractive` (sentences picked from the context, no LLM) or `openai` "
        "(any OpenAI-compatible chat server). Implied `openai` when only `base_url` is set.",
    )
    base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1; "
        "unset with backend=openai means api.openai.com.",
    )
    api_key: SecretStr = Field(
        default=SecretStr("not-needed"),
        description="API key; local servers (llama.cpp, vLLM, Ollama) accept any value.",
    )
    model: str = Field(
        default="local-model",
        description="Model name sent to the server; llama.cpp's server accepts any name.",
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature.")
    max_tokens: int = Field(default=512, ge=1, description="Completion token limit.")
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout, seconds.")
    max_retries: int = Field(
        default=1, ge=0, description="Client retries on connection errors, 429 and 5xx."
    )
    fallback_to_extractive: bool = Field(
        default=True,
        description="On a provider failure answer extractively (the Answer's `error` says so); "
        "otherwise return an empty Answer carrying only the error.",
    )
    stream_usage: bool = Field(
        default=True,
        description="Ask for token usage on streamed completions (`stream_options`); "
        "turn off for servers that reject the option.",
    )
    min_dense_score: float = Field(
        default=0.25,
        description="Abstain when no candidate has a rerank score and the best dense "
        "(cosine) score is below this. Candidates without dense scores are not judged.",
    )
    min_rerank_score: float | None = Field(
        default=None,
        description="Abstain when the best rerank score is below this; unset: never "
        "(rerank scales differ: logits, probabilities, provider scores).",
    )
    max_context_chars: int = Field(
        default=2000, ge=50, description="Each chunk's text is cut to this many characters."
    )
    extractive_sentences: int = Field(
        default=3, ge=1, description="Sentences the extractive backend puts in an answer."
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        description="Queries of one batch answered at once, at most (an LLM call is mostly "
        "waiting; a local server may serve fewer at a time); 1: one after the other.",
    )
    reply_ttl_s: int = Field(
        default=3600,
        ge=1,
        description="A reply stream under the answers stream (`rag.answers.<client>`) expires "
        "this many seconds after the generator last published to it (each publication renews "
        "it); the shared `rag.answers` never expires.",
    )
    subscription_ttl_s: int = Field(
        default=3600,
        ge=1,
        description="How long a `subscribe` query's Answer is watched for changes of the docs "
        "it cited, from its first Answer (regenerated Answers inherit the end).",
    )
    max_subscriptions_per_doc: int = Field(
        default=1000,
        ge=1,
        description="Subscriptions that may watch one doc; past it new ones are refused (the "
        "Answer is still sent, unwatched; counted in `<indexed>:watch:refused`).",
    )
    max_subscriptions: int = Field(
        default=100_000,
        ge=1,
        description="Subscriptions in all, at most (about 0.5 KB each, 1 KB with `regenerate`: "
        "README); past it new ones are refused.",
    )

    @model_validator(mode="after")
    def _imply_openai_backend(self) -> Self:
        if "backend" not in self.model_fields_set and self.base_url:
            self.backend = "openai"
        return self
