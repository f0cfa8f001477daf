"""Headless Chromium for the live page's tests, driven by Selenium through Debian's chromium-driver.

The browser and its driver are the system's (scripts/setup installs Debian's ``chromium`` and
``chromium-driver``); Selenium is given both paths, so it never downloads a browser or a driver. Where Chromium
cannot start, :func:`start` raises :class:`ChromiumUnavailable` with the reason, and the tests skip with it.
Stopping kills the driver and every browser process it started, by pid.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..workers import ROOT

ARTIFACTS = ROOT / "test-artifacts" / "browser"
BROWSERS = ("chromium", "chromium-browser")
DRIVERS = ("chromedriver",)
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests may run as root (containers), where Chromium's sandbox cannot start
    "--disable-dev-shm-usage",  # containers' /dev/shm is often 64 MB: Chromium's renderers would crash
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--window-size=1400,1050",
)


class ChromiumUnavailable(RuntimeError):
    """Chromium or its driver is missing, or the browser would not start: the reason, for a skip."""


@dataclass
class Browser:
    driver: object  # selenium.webdriver.Chrome (typed loosely: selenium is a dev dependency)
    driver_pid: int

    def stop(self) -> None:
        """Quit the browser; then kill, by pid, the driver and any browser process left behind."""
        try:
            driver_process = psutil.Process(self.driver_pid)
            children = driver_process.children(recursive=True)
        except psutil.NoSuchProcess:
            driver_process, children = None, []
        try:
            self.driver.quit()  # type: ignore[attr-defined]
        finally:
            for process in [*children, *([driver_process] if driver_process else [])]:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    continue
            psutil.wait_procs([*children, *([driver_process] if driver_process else [])], timeout=10)


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


def start(profile: Path, extra_flags: tuple[str, ...] = ()) -> Browser:
    """A headless Chromium with its own profile directory (and ``extra_flags``, e.g. a fake media device);
    raises ChromiumUnavailable if it cannot start."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:
        raise ChromiumUnavailable(f"selenium is not installed ({error}): run scripts/setup") from None
    browser = _which(BROWSERS)
    driver_path = _which(DRIVERS)
    if browser is None or driver_path is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver_path)) if p is None)
        raise ChromiumUnavailable(f"{missing} not found on PATH: scripts/setup installs Debian's chromium-driver")

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, *extra_flags):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, read by the tests
    log = ARTIFACTS / "chromedriver.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    service = Service(executable_path=driver_path, log_output=str(log))
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except WebDriverException as error:
        if service.process is not None and service.process.poll() is None:
            service.process.kill()
            service.process.wait(10)
        first = (error.msg or str(error)).strip().splitlines()[0]
        raise ChromiumUnavailable(f"Chromium did not start ({browser}, {driver_path}): {first}") from None
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    assert service.process is not None
    return Browser(driver, service.process.pid)


def environment_note() -> str:
    """Where the artefacts go (printed in the test summary)."""
    return f"browser test artefacts (screenshots, chromedriver.log): {ARTIFACTS}"
