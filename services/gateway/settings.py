"""Gateway settings (env prefix `RAG_GATEWAY_`); Redis and stream names come from
`RAG_REDIS_*` and `RAG_STREAM_*` like every stage's."""

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import secrets_dir


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAG_GATEWAY_", extra="ignore", secrets_dir=secrets_dir()
    )

    host: str = Field(
        default="0.0.0.0",
        description="Interface the gateway listens on (`python -m services.gateway`).",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port.")
    api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated API keys, accepted as `Authorization: Bearer <key>` or "
        "`X-API-Key: <key>` on /v1/*. Empty (the default): authentication is OFF and anyone "
        "who reaches the port can query and change documents. Env or the secret file "
        "`rag_gateway_api_keys`.",
    )
    query_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a query waits for its answer by default."
    )
    max_query_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Upper bound of a query's own `timeout_s` (larger values are capped).",
    )
    max_query_bytes: int = Field(
        default=64 * 1024, ge=1, description="Largest accepted `POST /v1/query` body (413 above)."
    )
    max_document_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1,
        description="Largest accepted `POST /v1/documents` body (413 above); keep it below the "
        "chunker's `RAG_CHUNKER_MAX_PAYLOAD_BYTES`.",
    )
    reply_idle_ttl_s: int = Field(
        default=600,
        ge=1,
        description="The gateway's own reply stream (`<answers>.gw.<uuid>`) expires after this "
        "many seconds without answers; every answer read renews it. Deleted on shutdown.",
    )
    sse_ping_s: float = Field(
        default=15.0, gt=0, description="Keep-alive comment interval of streamed answers (SSE)."
    )
    drain_s: float = Field(
        default=5.0,
        ge=0,
        description="On SIGTERM: /readyz answers 503 for this long while requests are still "
        "served (so load balancers stop sending any), then the server shuts down gracefully.",
    )
    grace_s: int = Field(
        default=30,
        ge=0,
        description="On shutdown: time in-flight requests (long polls, SSE streams) get to finish.",
    )
    log_level: str = Field(default="INFO", description="Log level.")

    def accepted_keys(self) -> tuple[bytes, ...]:
        """The configured API keys (empty: authentication is off)."""
        keys = self.api_keys.get_secret_value().split(",")
        return tuple(key.strip().encode() for key in keys if key.strip())
