"""Real audio without a sound card: a private PulseAudio server with a null sink, a tone played into it, and the
environment that lets a worker record the sink's monitor through ALSA's ``pulse`` device.

The server runs in its own temporary XDG_RUNTIME_DIR (its socket is ``$XDG_RUNTIME_DIR/pulse/native``), with
anonymous auth, no default script (``-n``) and only the modules the test needs. Clients (``pactl``, ``paplay``,
the worker's ALSA pulse plugin) find it through ``XDG_RUNTIME_DIR`` and ``PULSE_SERVER``. As root, PulseAudio
needs ``--system=no`` (it then only warns) and a writable HOME for its state. PortAudio lists devices when
``sounddevice`` is imported, so start the server before the worker records anything.

Everything started here is stopped (and reaped) on exit, with bounded waits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import wavfile

from tests.support import eventually

SINK = "krait_null"
RATE = 48000
START_TIMEOUT_S = 10.0

CONFIG = f"""\
load-module module-native-protocol-unix auth-anonymous=1
load-module module-null-sink sink_name={SINK} rate={RATE} channels=2
set-default-sink {SINK}
set-default-source {SINK}.monitor
"""

TOOLS = ("pulseaudio", "pactl", "paplay")


def missing_tools() -> list[str]:
    """The PulseAudio programs not on PATH (packages pulseaudio, pulseaudio-utils)."""
    return [t for t in TOOLS if shutil.which(t) is None]


@dataclass
class PulseServer:
    directory: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]  # what a client (paplay, a worker) needs to reach this server

    @property
    def log(self) -> str:
        path = self.directory / "pulse.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def pactl(self, *args: str) -> str:
        done = subprocess.run(
            ["pactl", *args], env={**os.environ, **self.env}, capture_output=True, timeout=10, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode(errors="replace")

    @contextlib.contextmanager
    def playing(self, wav: Path) -> Iterator[subprocess.Popen[bytes]]:
        """Play ``wav`` into the null sink at 100 % volume while the block runs."""
        player = subprocess.Popen(
            ["paplay", f"--device={SINK}", "--volume=65536", str(wav)],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            yield player
        finally:
            _stop(player)


def _stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


@contextlib.contextmanager
def pulse_server(directory: Path) -> Iterator[PulseServer]:
    """Start a private PulseAudio server with a null sink; stop it on exit."""
    run_dir, home = directory / "run", directory / "home"
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    (directory / "krait.pa").write_text(CONFIG)
    client_env = {"XDG_RUNTIME_DIR": str(run_dir), "PULSE_SERVER": f"unix:{run_dir}/pulse/native"}
    server_env = {**os.environ, "XDG_RUNTIME_DIR": str(run_dir), "HOME": str(home)}
    server_env.pop("PULSE_SERVER", None)  # the server must not try to reach another server
    process = subprocess.Popen(
        [
            "pulseaudio",
            "-n",
            "-F",
            str(directory / "krait.pa"),
            "--daemonize=no",
            "--system=no",
            "--exit-idle-time=-1",
            "--use-pid-file=no",
            "--realtime=no",
            "--high-priority=no",
            "--log-level=info",
            f"--log-target=file:{directory / 'pulse.log'}",
        ],
        env=server_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = PulseServer(directory, process, client_env)
    try:

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with {process.returncode}; its log:\n{server.log}")
            try:
                server.pactl("info")
            except RuntimeError as exc:
                raise AssertionError(f"pulseaudio not ready; its log:\n{server.log}") from exc
            return True

        eventually(answers, timeout=START_TIMEOUT_S, interval=0.1)
        server.pactl("set-sink-volume", SINK, "100%")
        server.pactl("set-source-volume", f"{SINK}.monitor", "100%")
        yield server
    finally:
        _stop(process)


def write_tone(path: Path, frequency_hz: float, amplitude: float, seconds: float, rate: int = RATE) -> Path:
    """A mono 16-bit WAV of a sine of peak ``amplitude`` (full scale 1.0): RMS level 20·log10(amplitude/√2) dBFS."""
    t = np.arange(round(seconds * rate)) / rate
    samples = np.round(amplitude * 32767 * np.sin(2 * np.pi * frequency_hz * t)).astype(np.int16)
    wavfile.write(path, rate, samples)
    return path
