"""The deployment manifests (deploy/kubernetes): they parse, and every command they run is one the CLI
accepts, with the security the worker needs to serve a non-loopback address and files from the mounted
Secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from python_worker.cli import build_parser
from python_worker.transports.security import ServerSecurity

from .workers import ROOT

MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def _documents() -> list[dict[str, Any]]:
    docs = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, "no manifests found"
    return docs


def _cli_args(command: list[str]) -> list[str]:
    assert command[:3] == ["python", "-m", "python_worker"], command
    return [str(arg) for arg in command[3:]]


def _mounted(spec: dict[str, Any], container: dict[str, Any], path: str) -> bool:
    secrets = {v["name"] for v in spec["volumes"] if "secret" in v}
    return any(m["name"] in secrets and Path(path).parent == Path(m["mountPath"]) for m in container["volumeMounts"])


def test_the_manifests_parse_and_their_commands_are_accepted() -> None:
    docs = _documents()
    kinds = {doc["kind"]: doc for doc in docs}
    service, deployment = kinds["Service"], kinds["Deployment"]
    assert service["spec"]["clusterIP"] == "None"  # headless: a pool resolves every pod
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]

    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    ns = build_parser().parse_args(_cli_args(container["command"]))
    assert ns.command == "serve"
    # what serve() checks before it binds: a routable address needs TLS and a token
    ServerSecurity(tls_cert=ns.tls_cert, tls_key=ns.tls_key, token="from-the-file", insecure=ns.insecure).check(ns.host)
    assert not ns.insecure
    for path in (ns.tls_cert, ns.tls_key, ns.token_file):
        assert _mounted(spec, container, path), f"{path} is not in a mounted Secret"
    assert {p["containerPort"] for p in container["ports"]} == {ns.port}
    assert service["spec"]["ports"][0]["port"] == ns.port

    for probe in ("readinessProbe", "livenessProbe"):
        probe_ns = build_parser().parse_args(_cli_args(container[probe]["exec"]["command"]))
        assert probe_ns.command == "health"
        assert probe_ns.target.endswith(f":{ns.port}")
        assert _mounted(spec, container, probe_ns.tls_ca)
