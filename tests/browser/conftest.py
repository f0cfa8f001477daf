"""Fixtures of the live page's tests: a real worker serving the dashboard adapter over HTTP with a token, and
one headless Chromium (skipped, with the reason, only where Chromium cannot start)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..workers import Worker, running_worker
from . import chromium
from .page import Page

TOKEN = "page-test-token-7f3a"
_saved: list[Path] = []


@pytest.fixture(scope="module")
def http_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN)
    args = ("--http-port", "0", "--token-file", str(token_file), "--worker-id", "page-test")
    with running_worker("adapters.dashboard:DashboardAdapter", *args) as worker:
        assert worker.info.get("http_port"), f"KRAIT_READY has no http_port: {worker.info}"
        yield worker


def started_browser(
    tmp_path_factory: pytest.TempPathFactory, name: str, extra_flags: tuple[str, ...] = ()
) -> Iterator[chromium.Browser]:
    """A Chromium for a module's tests (skipped, with the reason, where it cannot start), stopped after them."""
    try:
        started = chromium.start(tmp_path_factory.mktemp(name), extra_flags)
    except chromium.ChromiumUnavailable as reason:
        pytest.skip(str(reason))
    try:
        yield started
    finally:
        started.stop()


def opened_page(browser: chromium.Browser, http_worker: Worker, request: pytest.FixtureRequest) -> Iterator[Page]:
    """The worker's page, opened fresh (no cookie: logged out); a screenshot when the test failed."""
    opened = Page(browser.driver, f"http://127.0.0.1:{http_worker.info['http_port']}", request.node.name)
    opened.fresh()
    try:
        yield opened
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            opened.screenshot("failure")
        _saved.extend(opened.saved)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[chromium.Browser]:
    yield from started_browser(tmp_path_factory, "chromium-profile")


@pytest.fixture
def page(browser: chromium.Browser, http_worker: Worker, request: pytest.FixtureRequest) -> Iterator[Page]:
    yield from opened_page(browser, http_worker, request)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)  # lets the page fixture screenshot a failed test
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _saved:
        terminalreporter.write_sep("-", chromium.environment_note())
        for path in _saved:
            terminalreporter.write_line(str(path))
