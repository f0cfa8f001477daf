"""The live page as the tests drive it: log in, choose a tool, fill its form, start and stop runs, and read the
DOM hooks the page exposes (data-state, data-chunks, data-points, ...). Every wait is bounded."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from .chromium import ARTIFACTS

WAIT = 30.0  # seconds any one thing on the page may take (bounded; the tests' own timeouts bound the rest)


class Page:
    def __init__(self, driver: WebDriver, url: str, test_name: str) -> None:
        self.driver = driver
        self.url = url
        self.name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        self.saved: list[Path] = []

    # -- waiting and reading ----------------------------------------------------------------------------------
    def wait(self, condition: Callable[[WebDriver], Any], what: str, timeout: float = WAIT) -> Any:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition, f"{what} ({timeout} s)")

    def one(self, css: str, within: WebElement | None = None) -> WebElement:
        return (within or self.driver).find_element(By.CSS_SELECTOR, css)

    def all(self, css: str, within: WebElement | None = None) -> list[WebElement]:
        return (within or self.driver).find_elements(By.CSS_SELECTOR, css)

    def attr(self, element: WebElement, name: str) -> str:
        return element.get_attribute(name) or ""

    def body(self, name: str) -> str:
        return self.attr(self.one("body"), f"data-{name}")

    def screenshot(self, label: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{label}.png"
        self.driver.save_screenshot(str(path))
        self.saved.append(path)
        return path

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    # -- navigation and login ---------------------------------------------------------------------------------
    def fresh(self) -> None:
        """Open the page logged out: the session cookie and the session's secret are deleted first."""
        self.driver.get(self.url + "/")
        self.driver.delete_all_cookies()
        self.driver.execute_script("sessionStorage.clear()")
        self.driver.get(self.url + "/")
        self.driver.get_log("browser")  # start each test with an empty console
        self.wait(lambda d: self.body("auth") not in ("", "checking"), "the page asked /v1/auth")

    def login(self, token: str) -> None:
        field = self.one("#token")
        field.clear()
        field.send_keys(token)
        self.one('[data-action="login"]').click()

    def logged_in(self, token: str) -> None:
        if self.body("auth") == "login" and self.one("#token").is_displayed():
            self.login(token)
        self.wait(lambda d: self.body("auth") in ("ok", "open") and int(self.body("tools") or 0) > 0, "tools listed")

    # -- tools and runs ---------------------------------------------------------------------------------------
    def choose(self, tool: str) -> WebElement:
        self.one(f'button[data-tool="{tool}"]').click()
        return self.wait(lambda d: self.one(f'form[data-tool-form="{tool}"]'), f"the form of {tool}")

    def fill(self, form: WebElement, values: dict[str, Any]) -> None:
        for name, value in values.items():
            field = self.one(f'[data-param="{name}"]', form)
            if field.tag_name == "select":
                Select(field).select_by_visible_text(str(value))
            elif field.get_attribute("type") == "checkbox":
                if field.is_selected() != bool(value):
                    field.click()
            else:
                field.clear()
                field.send_keys(str(value))

    def start(self, tool: str, values: dict[str, Any] | None = None, *, every_chunk: bool = False) -> WebElement:
        """Start ``tool`` from its form; returns the new run's panel."""
        form = self.choose(tool)
        self.fill(form, values or {})
        if every_chunk:
            Select(self.one('[data-option="overflow"]', form)).select_by_value("block")
        before = len(self.all("article.run"))
        self.one('[data-action="start"]', form).click()
        self.wait(lambda d: len(self.all("article.run")) > before, f"a run of {tool} appeared")
        return self.all("article.run")[0]  # newest first

    def state(self, run: WebElement) -> str:
        return self.attr(run, "data-state")

    def until_state(self, run: WebElement, *states: str, timeout: float = WAIT) -> str:
        tool = self.attr(run, "data-tool")
        self.wait(lambda d: self.state(run) in states, f"{tool} reached {'/'.join(states)}", timeout)
        return self.state(run)

    def chunks(self, run: WebElement) -> int:
        return int(self.attr(run, "data-chunks") or 0)

    def view(self, run: WebElement, kind: str) -> WebElement:
        return self.wait(
            lambda d: self.all(f'[data-view="{kind}"]', run)[0] if self.all(f'[data-view="{kind}"]', run) else None,
            f"a {kind} view",
        )

    def chart(self, run: WebElement, group: str) -> WebElement:
        found = lambda d: (self.all(f'[data-chart="{group}"]', run) or [None])[0]  # noqa: E731
        return self.wait(found, f"the {group} chart")

    def number(self, element: WebElement, name: str) -> float:
        return float(self.attr(element, f"data-{name}") or "nan")
