"""The package installs: a fresh venv, ``pip install`` of the checkout, then ``krait-worker`` serving a user's
adapter from a folder named ``adapters`` (which the bundled adapters must not shadow), called over gRPC.

Bounded: pip reuses its cache and installs only the base dependencies (no extras); the whole test takes well
under two minutes on a warm cache.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from python_worker.client import Client, UnauthenticatedError

from .workers import ROOT, wait_ready

USER_ADAPTER = textwrap.dedent(
    """
    from python_worker import BaseAdapter, tool


    class Mine(BaseAdapter):
        @tool
        def shout(self, text: str) -> str:
            \"\"\"Upper-case text.\"\"\"
            return text.upper() + "!"
    """
)


def _run(*cmd: str | Path, cwd: Path, timeout: float = 240, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _checkout(dest: Path) -> Path:
    """The working tree's files (tracked and new, not ignored): no .venv, no generated stubs, no build output."""
    listed = _run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    assert not (dest / "python_worker" / "_generated").exists()
    return dest


def test_pip_install_gives_a_worker_that_serves_a_users_adapters_package(tmp_path: Path) -> None:
    source = _checkout(tmp_path / "krait")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "-q"]

    # a built wheel holds the generated stubs, py.typed and the bundled adapters under their own name
    _run(*pip, "wheel", "--no-deps", "-w", tmp_path / "dist", source, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("krait-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "python_worker/_generated/krait/v1/worker_pb2_grpc.py" in names
    assert "python_worker/py.typed" in names and "krait_adapters/showcase/adapter.py" in names
    page = "python_worker/transports/http/static/"  # the live page, served at / by serve --http-port
    assert {f"{page}{f}" for f in ("index.html", "main.js", "socket.js", "views.js", "style.css")} <= set(names)
    assert "krait_adapters/dashboard/adapter.py" in names
    assert not any(n.startswith("adapters/") for n in names)

    _run(*pip, "install", source, cwd=tmp_path)

    # a user's project with its own `adapters` package
    project = tmp_path / "project"
    (project / "adapters").mkdir(parents=True)
    (project / "adapters" / "__init__.py").write_text("")
    (project / "adapters" / "mine.py").write_text(USER_ADAPTER)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    check = "import importlib.util as u; print(u.find_spec('adapters'), u.find_spec('krait_adapters.showcase').name)"
    out = subprocess.run(
        [venv / "bin" / "python", "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["None", "krait_adapters.showcase"], out.stderr  # nothing named adapters installed

    worker = subprocess.Popen(
        [venv / "bin" / "krait-worker", "serve", "--adapter", "adapters.mine:Mine", "--port", "0"],
        cwd=project,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        info = wait_ready(worker, timeout=60)
        target = f"127.0.0.1:{info['port']}"
        # given no token, the worker made one (256 bits) and announced it: without it, nothing is served
        assert len(info["token"]) == 43
        with Client(target, timeout=20, token="not-the-token") as stranger, pytest.raises(UnauthenticatedError):
            stranger.execute("shout", text="hello")
        with Client(target, timeout=20, token=info["token"]) as client:
            assert client.execute("shout", text="hello") == "HELLO!"
        # the installed client and CLI work too, the CLI with the token from the environment
        called = _run(
            *(venv / "bin" / "krait-worker", "call", "shout", "--target", target, "--args", '{"text": "hi"}'),
            cwd=project,
            env={**env, "KRAIT_TOKEN": info["token"]},
        )
        assert called.strip() == '"HI!"'
    finally:
        worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
    assert worker.returncode is not None
