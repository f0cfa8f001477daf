"""The package build generates the gRPC stubs from proto/ (they are never committed).

setuptools runs ``build_py`` for wheels and for editable installs; this hook adds one step to it: grpcio-tools'
protoc compiles the files scripts/gen-proto names (``proto/krait/v1/*.proto``) into ``python_worker/_generated``
(in the build directory for a wheel, in the source tree for an editable install). The package list is here
too, because pyproject.toml cannot rename a folder (``adapters/`` installs as ``krait_adapters``); the rest is
declared in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = ("krait/v1/worker.proto", "krait/v1/link.proto")


def generate_stubs(out: Path) -> list[str]:
    """Compile the protos into ``out/python_worker/_generated``; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    includes = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-Ipython_worker/_generated={ROOT / 'proto'}",
        f"-I{includes}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--pyi_out={out}",
        *(str(ROOT / "proto" / proto) for proto in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(PROTOS)}")
    generated = out / "python_worker" / "_generated" / "krait" / "v1"
    return [str(p) for p in sorted(generated.glob("*_pb2*"))]


class BuildPyWithStubs(build_py):
    """``build_py`` that also generates the gRPC stubs."""

    def run(self) -> None:
        super().run()
        out = ROOT if self.editable_mode else Path(self.build_lib)
        self._stubs = generate_stubs(out)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *getattr(self, "_stubs", [])]


def packages() -> tuple[list[str], dict[str, str]]:
    """python_worker, and the repository's ``adapters/`` folder as ``krait_adapters``: installed under its own
    name, it never shadows a user's ``adapters`` package (a checkout still imports it as ``adapters``)."""
    names = find_packages(include=["python_worker", "python_worker.*"])
    bundled = find_packages(include=["adapters", "adapters.*"])
    names += ["krait_adapters" + name.removeprefix("adapters") for name in bundled]
    return names, {"krait_adapters": "adapters"}


PACKAGES, PACKAGE_DIR = packages()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR, cmdclass={"build_py": BuildPyWithStubs})
