"""Test helpers shared by every suite: waiting for state instead of sleeping for it; raw gRPC channels that
carry the session's token."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

T = TypeVar("T")


def eventually(check: Callable[[], T], *, timeout: float = 5.0, interval: float = 0.01, what: str = "") -> T:
    """Call ``check`` until it returns a truthy value, and return that value.

    ``check`` may also assert: an AssertionError means "not yet". After ``timeout`` seconds the last
    AssertionError is raised again (or one naming ``what`` and the last value), so a failure says what
    never happened.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        else:
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what or 'the condition'} did not hold within {timeout} s (last: {value!r})")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, exited but not reaped yet, counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if "\nState:\tZ" in status:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def token() -> str:
    """The token every worker a test starts serves with (tests/conftest.py sets it for the session)."""
    return os.environ["KRAIT_TOKEN"]


def auth_metadata() -> tuple[tuple[str, str]]:
    """Call metadata carrying the session's token, for raw gRPC stubs."""
    return (("authorization", f"Bearer {token()}"),)


class _WithToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the session's token to every call of a channel (raw stubs need it as Krait's Client sends it)."""

    def _add(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), *auth_metadata()]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._add(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._add(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._add(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._add(details), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(self, details: Any, metadata: Any) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


def authed(channel: grpc.Channel) -> grpc.Channel:
    """``channel`` with the session's token on every call."""
    return grpc.intercept_channel(channel, _WithToken())


def insecure_channel(target: str) -> grpc.Channel:
    """A plain-text channel to ``target`` whose calls carry the session's token."""
    return authed(grpc.insecure_channel(target))
