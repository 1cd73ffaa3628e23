"""Common base for every event that crosses a stream."""

from datetime import UTC, datetime
from typing import Literal
from uuid import UUID, uuid4

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def non_blank(what: str) -> AfterValidator:
    """A validator rejecting strings that are empty or only whitespace: "<what> is empty"."""

    def check(value: str) -> str:
        if not value.strip():
            raise ValueError(f"{what} is empty")
        return value

    return AfterValidator(check)


class Event(BaseModel):
    """Envelope fields shared by every event: identity, schema version and emission time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: UUID = Field(default_factory=uuid4)
    emitted_at: datetime = Field(default_factory=utcnow)
