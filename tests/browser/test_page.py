"""The live page in headless Chromium against a real worker (adapters.dashboard, --http-port 0, a token): log in,
start streams from the page's forms, read from the DOM that the views drew what the streams carried and that
the final state is shown, and stop a running stream from the page (the tool itself stopped: checked over gRPC).
Screenshots are saved under test-artifacts/browser/ (the path is printed in the test summary)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from python_worker.client import Client

from ..support import eventually
from ..workers import Worker
from .conftest import TOKEN
from .page import Page

pytestmark = pytest.mark.timeout(150)


def test_the_page_asks_for_the_token_and_keeps_it_out_of_urls_and_scripts(page: Page) -> None:
    assert page.body("auth") == "login"
    assert not page.all("button[data-tool]")  # nothing listed before logging in

    page.login("not-the-token")
    error = page.wait(lambda d: page.one("#login-error").is_displayed() and page.one("#login-error"), "refused")
    assert "not accepted" in error.text and page.body("auth") == "login"
    page.screenshot("login-refused")

    page.login(TOKEN)
    page.wait(lambda d: page.body("auth") == "ok" and int(page.body("tools") or 0) > 0, "logged in, tools listed")
    names = {page.attr(b, "data-tool") for b in page.all("button[data-tool]")}
    assert {"stream_progress", "train_model", "stream_spectrum", "monitor", "stream_levels"} <= names

    # the session is an HttpOnly cookie (scripts cannot read it) and a secret in this origin's sessionStorage;
    # the token is in no URL
    cookies = {c["name"]: c for c in page.driver.get_cookies()}
    assert cookies["krait_session"]["httpOnly"] and TOKEN not in cookies["krait_session"]["value"]
    assert "krait_session" not in page.driver.execute_script("return document.cookie")
    secret = page.driver.execute_script("return sessionStorage.getItem('krait-secret')")
    assert secret and secret != cookies["krait_session"]["value"]
    assert TOKEN not in page.driver.current_url
    page.driver.refresh()  # the cookie and the secret keep the page logged in
    page.wait(lambda d: page.body("auth") == "ok" and int(page.body("tools") or 0) > 0, "still logged in")

    # the cookie as a server on another port of 127.0.0.1 receives it, replayed with the page's own Origin: refused
    replayed = {"krait_session": cookies["krait_session"]["value"]}
    with httpx.Client(base_url=page.url, cookies=replayed, headers={"Origin": page.url}, timeout=30) as thief:
        assert thief.get("/v1/tools").status_code == 401
        assert thief.post("/v1/tools/stream_events", json={"tag": "x"}).status_code == 401
        assert thief.get("/v1/auth").json() == {"required": True, "authenticated": False}
        assert thief.post("/v1/logout").status_code == 204
    page.driver.refresh()  # and it could not log the page out
    page.wait(lambda d: page.body("auth") == "ok" and int(page.body("tools") or 0) > 0, "still logged in")

    page.one("#logout").click()
    page.wait(lambda d: page.body("auth") == "login", "logged out")
    assert [e for e in page.console_errors() if "401 (Unauthorized)" not in e] == []  # only the refused login


def test_progress_training_and_a_spectrum_draw_as_they_run_and_end_with_their_final_state(page: Page) -> None:
    page.logged_in(TOKEN)
    progress = page.start("stream_progress", {"steps": 100, "delay_ms": 100})  # 10 s
    bar = page.view(progress, "progress")
    page.wait(lambda d: 0 < page.number(bar, "value") < 100, "the progress bar part-way")  # it moves as it runs
    training = page.start("train_model", {"epochs": 6, "hidden": 16}, every_chunk=True)
    spectrum = page.start("stream_spectrum", {"max_chunks": 30})
    plot = page.view(spectrum, "spectrum")
    page.wait(lambda d: page.number(plot, "frames") >= 2, "spectrum frames arriving")
    page.screenshot("running")

    for run in (progress, training, spectrum):
        assert page.until_state(run, "done", "error", timeout=60) == "done", page.one("[data-final]", run).text

    assert page.number(bar, "value") == 100.0

    # every epoch reached the page (overflow=block): loss and val_loss, accuracy and val_accuracy, 6 points each
    loss, accuracy = page.chart(training, "loss"), page.chart(training, "accuracy")
    assert (page.number(loss, "points"), page.number(loss, "series")) == (12, 2)
    assert (page.number(accuracy, "points"), page.number(accuracy, "series")) == (12, 2)
    assert page.number(page.view(training, "progress"), "value") == 100.0
    assert '"type": "complete"' in page.view(training, "text").text  # the final summary chunk, with its model_id

    # the default test signal: a 440 Hz sine, 256 log-spaced points per frame
    assert page.number(plot, "frames") >= 2 and page.number(plot, "points") == 256
    assert page.number(plot, "peak-hz") == pytest.approx(440.0, abs=2.0)
    assert page.number(page.chart(spectrum, "Hz"), "points") >= 2  # peak frequency over time

    for run in (progress, training, spectrum):
        final = page.one("[data-final]", run).text
        assert "finished" in final.lower() and "execution_time_ms" in final and "worker_id page-test" in final
    assert page.chunks(training) == 7  # 6 epochs + the final summary
    page.screenshot("finished")
    assert page.console_errors() == []


def test_a_token_in_the_fragment_logs_in_and_leaves_the_address_bar(page: Page) -> None:
    # `serve` prints http://127.0.0.1:PORT/#token=...: the fragment never reaches the worker; the page logs in with
    # it and takes it out of the address (the rest of the fragment stays)
    page.driver.get("about:blank")  # a navigation, not a same-document fragment change
    page.driver.get(f"{page.url}/#token={TOKEN}&tool=stream_progress")
    page.wait(lambda d: page.body("auth") == "ok" and int(page.body("tools") or 0) > 0, "logged in by the fragment")
    page.wait(lambda d: page.one('form[data-tool-form="stream_progress"]'), "the tool named in the fragment")
    assert TOKEN not in page.driver.current_url and "tool=stream_progress" in page.driver.current_url
    assert TOKEN not in page.driver.execute_script("return location.href + document.body.innerHTML")
    run = page.start("stream_progress", {"steps": 3, "delay_ms": 10})  # the WebSocket takes the session's secret
    assert page.until_state(run, "done") == "done"

    page.fresh()
    page.driver.get("about:blank")
    page.driver.get(f"{page.url}/#token=not-the-token")
    error = page.wait(lambda d: page.one("#login-error").is_displayed() and page.one("#login-error"), "refused")
    assert "not accepted" in error.text and page.body("auth") == "login" and "token" not in page.driver.current_url


def test_stopping_a_running_stream_from_the_page_stops_the_tool(page: Page, http_worker: Worker) -> None:
    page.logged_in(TOKEN)
    tag = f"page-{uuid.uuid4().hex[:8]}"
    ticking = page.start("endless_stream", {"interval_ms": 20, "tag": tag})
    audio = page.start("stream_spectrum", {})  # a generated signal, unbounded: runs until stopped
    page.wait(lambda d: page.chunks(ticking) >= 5 and page.chunks(audio) >= 3, "both streams running")
    assert page.state(ticking) == page.state(audio) == "running"

    for run in (ticking, audio):
        page.one('[data-action="stop"]', run).click()
        assert page.until_state(run, "cancelled", "error", "done") == "cancelled"
        assert "cancelled" in page.one("[data-final]", run).text.lower()
    page.screenshot("cancelled")

    with Client(http_worker.target, token=TOKEN, timeout=30) as client:
        events = eventually(lambda: client.execute("stream_events", tag=tag), timeout=10, what="stream events")
        eventually(lambda: "finally" in client.execute("stream_events", tag=tag), timeout=10, what="its finally ran")
        ticks = client.execute("stream_events", tag=tag)["ticks"]
        assert client.execute("stream_events", tag=tag)["ticks"] == ticks  # no longer ticking
        assert events["started"] > 0

        def closed() -> dict:
            streams = client.execute("active_streams")
            assert not [s for s in streams["open"] if s["tool"] == "stream_spectrum"]
            return streams["closed"][-1]

        assert eventually(closed, timeout=10, what="the spectrum's source closed")["outcome"] == "cancelled"


def test_levels_pitch_and_an_instrument_monitor_get_their_own_views(page: Page) -> None:
    page.logged_in(TOKEN)
    levels = page.start("stream_levels", {"max_chunks": 20})
    pitch = page.start("stream_pitch", {"max_chunks": 20})
    monitor = page.start("monitor", {"poll_interval": 0.05, "max_polls": 40, "seed": 3}, every_chunk=True)
    for run in (levels, pitch, monitor):
        assert page.until_state(run, "done", "error", timeout=60) == "done", page.one("[data-final]", run).text

    # a 440 Hz sine at -6 dBFS peak: -9.03 dBFS RMS, peak held at -6.02; note A4, about 0 cents
    meter = page.view(levels, "meter")
    assert page.number(meter, "level") == pytest.approx(-9.03, abs=0.1)
    assert page.number(meter, "peak-hold") == pytest.approx(-6.02, abs=0.1)
    assert page.number(page.chart(levels, "dBFS"), "points") >= 2
    tuner = page.view(pitch, "pitch")
    assert page.attr(tuner, "data-note") == "A4" and abs(page.number(tuner, "cents")) < 1.0

    # the simulated lab's 9 parameters; the thermometer's random walk changes every poll: highlighted cells
    table = page.view(monitor, "table")
    assert page.number(table, "rows") == 9
    assert page.number(table, "changed-cells") >= 1
    assert page.all('tr[data-row="thermometer_temperature"] td[data-changes]', table)
    assert "ended: max_polls after 40 polls" in table.text
    page.screenshot("audio-and-instruments")
    assert page.console_errors() == []


def test_forms_check_input_and_errors_reach_the_page(page: Page) -> None:
    page.logged_in(TOKEN)
    form = page.choose("add")
    page.fill(form, {"a": "2"})
    page.one('[data-action="start"]', form).click()
    problem = page.one(".form-error", form)
    assert problem.is_displayed() and problem.text == "b: is required"
    assert not page.all('article.run[data-tool="add"]')

    page.fill(form, {"b": "3.5"})
    page.one('[data-action="start"]', form).click()
    run = page.all('article.run[data-tool="add"]')[0]
    assert page.until_state(run, "done", "error") == "done"
    assert page.one("[data-result]", run).text == "5.5"

    failing = page.start("failing_stream", {"fail_at": 2}, every_chunk=True)
    assert page.until_state(failing, "done", "error") == "error"
    assert page.attr(failing, "data-error-code") == "UNKNOWN"  # the tool's own exception, by its type
    final = page.one("[data-final]", failing).text
    assert "ValueError" in final and "failed at step 3" in final and page.chunks(failing) == 2

    bad = page.start("train_model", {"epochs": "-1"})
    assert page.until_state(bad, "done", "error") == "error"
    assert page.one("[data-final] .error-message", bad).text
    page.screenshot("errors")


def test_quick_start_runs_every_view_at_once_and_each_stops(page: Page) -> None:
    page.logged_in(TOKEN)
    presets = [page.attr(b, "data-preset") for b in page.all("#presets [data-preset]")]
    assert {"training", "spectrum", "levels", "pitch", "spectrogram", "progress", "instruments", "all"} <= set(presets)
    page.one('#presets [data-preset="all"]').click()
    runs = page.wait(lambda d: len(page.all("article.run")) >= 7 and page.all("article.run"), "seven runs")
    views = {
        "train_model": '[data-chart="loss"]',
        "stream_spectrum": '[data-view="spectrum"]',
        "stream_levels": '[data-view="meter"]',
        "stream_pitch": '[data-view="pitch"]',
        "stream_spectrogram": '[data-view="spectrogram"]',
        "stream_progress": '[data-view="progress"]',
        "monitor": '[data-view="table"]',
    }
    for run in runs:
        css = views[page.attr(run, "data-tool")]
        page.wait(lambda d, run=run, css=css: page.all(css, run) and page.chunks(run) >= 3, f"{css} drawing")
    page.driver.execute_script("window.scrollTo(0, 0)")
    page.screenshot("quick-start")

    for run in runs:
        if page.state(run) == "running":
            page.one('[data-action="stop"]', run).click()
    for run in runs:  # a short one may have finished first
        assert page.until_state(run, "cancelled", "done", "error") in ("cancelled", "done"), page.attr(run, "data-tool")
    assert page.console_errors() == []


def test_numpy_chunks_arrive_as_binary_frames_and_are_drawn(page: Page) -> None:
    page.logged_in(TOKEN)
    spectrum = page.start("stream_spectrum", {"max_chunks": 5, "format": "npy"}, every_chunk=True)
    arrays = page.start("stream_arrays", {"batches": 2, "batch_rows": 3, "cols": 4}, every_chunk=True)
    for run in (spectrum, arrays):
        assert page.until_state(run, "done", "error") == "done", page.one("[data-final]", run).text

    plot = page.view(spectrum, "spectrum")  # a float32 (2, 256) array: frequencies, levels; the peak in metadata
    assert (page.number(plot, "frames"), page.number(plot, "points")) == (5, 256)
    assert page.number(plot, "peak-hz") == pytest.approx(440.0, abs=2.0)
    text = page.one("pre", page.view(arrays, "text")).text
    assert text.startswith("array <f4 shape (3, 4), min ") and page.chunks(arrays) == 2

    form = page.choose("array_stats")  # arrays as arguments travel over gRPC and the link, not HTTP's JSON
    page.one('[data-action="start"]', form).click()
    assert "cannot be sent from the page" in page.one(".form-error", form).text
    assert page.console_errors() == []
