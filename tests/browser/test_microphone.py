"""The live page's microphone source in headless Chromium against a real worker (adapters.dashboard over HTTP with a
token): getUserMedia -> AudioWorklet -> binary input frames on /v1/ws within the worker's credit -> analyse_stream
-> the level meter, spectrum and tuner. Chromium's fake capture device (--use-fake-device-for-media-stream)
plays a beep; the test first records that device itself and measures the beep's pitch independently (period from
zero crossings), then checks the page's tuner shows that pitch. Stopping the input ends the runs normally and
releases the microphone."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from adapters.audio.signal.notes import note_of
from python_worker.client import Client

from ..support import eventually
from ..workers import Worker
from . import chromium
from .conftest import TOKEN, opened_page, started_browser
from .page import Page

pytestmark = pytest.mark.timeout(180)

FAKE_MEDIA = (
    "--use-fake-ui-for-media-stream",  # grant the microphone without asking
    "--use-fake-device-for-media-stream",  # Chromium's fake capture device: a beep
)

# Records the fake device directly (not through the page's code), for an independent measurement. Run after a
# click on the page: an AudioContext starts only once the user has interacted with the page (autoplay policy).
RECORD = """
const [seconds, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  const context = new AudioContext();
  await context.resume();
  const source = context.createMediaStreamSource(stream);
  const tap = context.createScriptProcessor(4096, 1, 1);
  const parts = [];
  tap.onaudioprocess = (e) => parts.push(Array.from(e.inputBuffer.getChannelData(0)));
  source.connect(tap);
  tap.connect(context.destination);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  source.disconnect(); tap.disconnect();
  stream.getTracks().forEach((t) => t.stop());
  await context.close();
  return { rate: context.sampleRate, samples: parts.flat() };
})().then(done, (e) => done({ error: String(e) }));
"""


@pytest.fixture(scope="module")
def mic_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[chromium.Browser]:
    yield from started_browser(tmp_path_factory, "chromium-mic-profile", FAKE_MEDIA)


@pytest.fixture
def page(mic_browser: chromium.Browser, http_worker: Worker, request: pytest.FixtureRequest) -> Iterator[Page]:
    yield from opened_page(mic_browser, http_worker, request)


def beep_pitch(samples: np.ndarray, rate: float) -> float:
    """The fundamental of the beeps in ``samples``: in each burst (the device is silent between them), the mean
    period between rising crossings of the burst's mean level; the median over the bursts."""
    loud = np.abs(samples - np.median(samples)) > 0.05
    # bursts: runs of loud samples, gaps shorter than 5 ms bridged (a square wave sits at 0 half the time)
    bridge = np.convolve(loud.astype(float), np.ones(round(0.005 * rate)), "same") > 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], bridge.astype(int), [0]])))
    pitches = []
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        burst = samples[start:end]
        if len(burst) < 0.01 * rate:
            continue
        above = burst > burst.mean()
        rising = np.flatnonzero(~above[:-1] & above[1:])
        if len(rising) >= 4:
            pitches.append(rate * (len(rising) - 1) / (rising[-1] - rising[0]))
    assert len(pitches) >= 2, "the fake device played no measurable beep"
    return float(np.median(pitches))


def cents(a: float, b: float) -> float:
    return 1200 * math.log2(a / b)


def test_the_microphone_is_analysed_live_and_the_tuner_shows_the_devices_pitch(page: Page, http_worker: Worker) -> None:
    page.logged_in(TOKEN)
    page.one('[data-preset="microphone"]').click()
    page.wait(lambda d: page.body("microphone") == "on", "the microphone opened")

    # what the fake device really plays, measured from its own samples, beside the page's capture
    recorded: dict[str, Any] = page.driver.execute_async_script(RECORD, 2.5)
    assert "error" not in recorded, recorded
    samples = np.asarray(recorded["samples"], dtype=np.float64)
    device_hz = beep_pitch(samples, recorded["rate"])
    assert 50 < device_hz < 4000  # a tone, whatever it is (Chromium 156: a 400 Hz square-wave beep twice a second)
    runs = page.wait(lambda d: len(page.all('article.run[data-tool="analyse_stream"]')) == 3 and
                     page.all('article.run[data-tool="analyse_stream"]'), "three runs of analyse_stream")  # fmt: skip
    pitch_run = next(r for r in runs if '"pitch"' in page.one("code.args", r).text)
    tuner = page.view(pitch_run, "pitch")
    page.wait(lambda d: page.attr(tuner, "data-last-hz"), "the tuner heard a note", timeout=20)
    page.wait(lambda d: int(page.attr(tuner, "data-voiced") or 0) >= 3, "three voiced readings", timeout=20)
    shown = page.number(tuner, "last-hz")
    assert abs(cents(shown, device_hz)) < 20, (shown, device_hz)
    assert page.attr(tuner, "data-last-note") == note_of(device_hz).name
    assert page.one("[data-last]", tuner).text.startswith(f"last: {note_of(device_hz).name}")

    # the same display as the other sources: the level meter and the spectrum are live too
    levels_run = next(r for r in runs if '"levels"' in page.one("code.args", r).text)
    spectrum_run = next(r for r in runs if '"spectrum"' in page.one("code.args", r).text)
    meter = page.view(levels_run, "meter")
    page.wait(lambda d: int(page.attr(meter, "data-frames") or 0) >= 5, "meter updates")
    assert -90 < page.number(meter, "peak-hold") <= 0.5  # the beep's held peak, in dBFS
    spectrum = page.view(spectrum_run, "spectrum")
    page.wait(lambda d: int(page.attr(spectrum, "data-frames") or 0) >= 5, "spectrum frames")
    assert int(page.attr(spectrum, "data-points")) > 8
    for run in runs:
        assert page.state(run) == "running" and int(page.attr(run, "data-input-sent") or 0) > 10
        assert page.attr(run, "data-input") == "streaming"
    page.screenshot("microphone")

    # stopping ends the input: each tool reads the end and finishes normally; the microphone is released
    for run in runs:
        page.one('[data-action="stop"]', run).click()
    for run in runs:
        assert page.until_state(run, "done", "error", "cancelled", timeout=20) == "done"
    page.wait(lambda d: page.body("microphone") == "off", "the microphone released")
    with Client(http_worker.target, token=TOKEN, timeout=30) as client:
        streams = eventually(lambda: client.execute("active_streams"), timeout=10, what="active streams")
        assert not [s for s in streams["open"] if s["tool"] == "analyse_stream"]
        ended = [s for s in streams["closed"] if s["tool"] == "analyse_stream"][-3:]
        assert [s["outcome"] for s in ended] == ["finished"] * 3 and all(s["items"] > 10 for s in ended)
    assert page.console_errors() == []


def test_a_tools_form_streams_its_input_from_the_microphone_or_a_json_list(page: Page) -> None:
    page.logged_in(TOKEN)
    # a tool reading binary frames: its form's input is the microphone, sample_rate filled in with its rate
    run = page.start("analyse_stream", {"analysis": "levels"})
    page.wait(lambda d: page.attr(run, "data-input") == "streaming", "the microphone streams into the run")
    form = page.one('form[data-tool-form="analyse_stream"]')
    rate = int(page.one('[data-param="sample_rate"]', form).get_attribute("value"))
    assert rate == page.driver.execute_script("return new AudioContext().sampleRate")
    page.wait(lambda d: int(page.attr(page.view(run, "meter"), "data-frames") or 0) >= 3, "meter updates")
    page.one('[data-action="stop"]', run).click()
    assert page.until_state(run, "done", "error", "cancelled", timeout=20) == "done"
    page.wait(lambda d: page.body("microphone") == "off", "the microphone released")

    # a tool reading JSON items: a JSON list in the form, sent within the credit, then the input's end
    run = page.start("sum_input", {"items": '[{"i": 1}, {"i": 2}, {"i": 39}]'})
    assert page.until_state(run, "done", "error", timeout=20) == "done"
    assert page.one("[data-result]", run).text == "42"
    assert page.attr(run, "data-input-sent") == "3"
    assert page.console_errors() == []
