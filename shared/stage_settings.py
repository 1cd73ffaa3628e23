"""Consumer settings every stage has; each service subclasses with its own env prefix."""

import os
import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_consumer_name() -> str:
    """Unique per process: the pod name on Kubernetes, else host-pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class StageSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    group: str | None = Field(
        default=None, description="Consumer group; default: the stage name. One group per stage."
    )
    consumer: str = Field(
        default_factory=default_consumer_name,
        description="Consumer name, unique per replica (POD_NAME or host-pid).",
    )
    batch_size: int = Field(default=32, ge=1, description="Max entries read per XREADGROUP.")
    poll_ms: int = Field(default=100, ge=1, description="XREADGROUP BLOCK timeout.")
    max_payload_bytes: int = Field(
        default=10 * 1024 * 1024, description="Entries with a larger payload are dead-lettered."
    )
    max_deliveries: int = Field(
        default=5, ge=1, description="An entry delivered more often than this is dead-lettered."
    )
    reclaim_idle_ms: int = Field(
        default=30_000,
        description="Entries pending longer than this (a dead consumer's) are reclaimed.",
    )
    reclaim_interval_s: float = Field(default=5.0, description="How often to look for them.")
    stale_consumer_idle_s: float = Field(
        default=3600.0, description="Consumers idle this long with nothing pending are removed."
    )
    maintenance_interval_s: float = Field(
        default=30.0,
        description="How often the stage trims acknowledged entries from its input streams "
        "(MINID below every group's oldest pending and last-delivered id) and removes stale "
        "consumers.",
    )
    retention_s: float = Field(
        default=86_400.0,
        description="Streams no consumer group reads (freshness acks, answers) keep this many "
        "seconds of entries; older ones are trimmed when publishing.",
    )
    transient_retry_s: float = Field(
        default=300.0,
        description="How long a batch is retried in-process on transient errors (store down) "
        "before it is left pending for reclaim.",
    )
    grace_s: float = Field(
        default=30.0, description="On SIGTERM: time to finish and ack in-flight work."
    )
    log_level: str = Field(default="INFO", description="Log level.")
    http_host: str = Field(default="0.0.0.0", description="Address of /livez, /readyz, /metrics.")
    http_port: int = Field(
        default=9000,
        ge=0,
        le=65535,
        description="Port of /livez, /readyz and /metrics; 0: no HTTP server.",
    )
    metrics_interval_s: float = Field(
        default=15.0, gt=0, description="How often the group's lag and pending count are sampled."
    )
