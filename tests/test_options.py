"""Communicator options that switch layers on and off."""

from __future__ import annotations

import uuid

import pytest

import kiwi_anyio
from kiwi_anyio import telemetry


def url() -> str:
    return f"memory://test-{uuid.uuid4().hex}"


def test_telemetry_is_on_by_default_when_the_api_is_importable() -> None:
    assert telemetry.available()  # the test extra installs opentelemetry-api
    comm = kiwi_anyio.connect(url())
    assert comm.hooks.publish and comm.hooks.delivery


def test_telemetry_false_installs_nothing() -> None:
    comm = kiwi_anyio.connect(url(), telemetry=False)
    assert not comm.hooks.publish and not comm.hooks.delivery


def test_telemetry_true_requires_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "available", lambda: False)
    with pytest.raises(ImportError, match=r"kiwi-anyio\[otel\]"):
        kiwi_anyio.connect(url(), telemetry=True)
    comm = kiwi_anyio.connect(url())  # the default just goes without
    assert not comm.hooks.publish
