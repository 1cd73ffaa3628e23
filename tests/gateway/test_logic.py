"""The gateway's pure pieces: API-key settings, key comparison, default versions."""

import time

import pytest

from services.gateway.auth import key_accepted
from services.gateway.documents import VersionClock
from services.gateway.settings import GatewaySettings


def test_api_keys_are_comma_separated_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_GATEWAY_API_KEYS", " alpha-1, beta-2 ,,")
    settings = GatewaySettings()
    assert settings.accepted_keys() == (b"alpha-1", b"beta-2")
    assert "alpha-1" not in repr(settings) and "alpha-1" not in str(settings.model_dump())


def test_no_keys_means_auth_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAG_GATEWAY_API_KEYS", raising=False)
    assert GatewaySettings().accepted_keys() == ()
    assert GatewaySettings(api_keys=" , ").accepted_keys() == ()


def test_key_comparison() -> None:
    keys = (b"alpha-1", b"beta-2")
    assert key_accepted(keys, "beta-2")
    assert not key_accepted(keys, "beta-")
    assert not key_accepted(keys, "beta-22")
    assert not key_accepted((), "anything")
    assert not key_accepted(keys, "bëta-2")


def test_default_versions_are_clock_milliseconds_and_strictly_increasing() -> None:
    clock = VersionClock()
    before = time.time_ns() // 1_000_000
    versions = [clock.next() for _ in range(1000)]  # many per millisecond
    assert versions == sorted(set(versions))
    assert before <= versions[0] <= time.time_ns() // 1_000_000
