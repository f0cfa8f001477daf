"""BaseAdapter: a class whose ``@tool`` methods a worker serves, and how a worker loads one."""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any, ClassVar

from .context import Session
from .tool import ToolSpec, UnresolvedHint, build_spec, is_tool


class BaseAdapter:
    """Base class of adapters. A worker creates one instance at start and serves its ``@tool`` methods.

    Override :meth:`setup` for expensive one-time work (loading a model), :meth:`close` to release what the
    adapter holds at shutdown, and :meth:`on_session_end` to release per-session resources.

    The tools are checked when the class is created (at import): a definition Krait cannot serve raises
    TypeError naming the tool. Type hints naming something defined later in the module are checked when the
    worker first lists the tools.
    """

    _krait_specs: ClassVar[dict[str, ToolSpec] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._krait_specs = None
        # a forward reference is resolved (or reported) by the first tool_specs() call instead
        with contextlib.suppress(UnresolvedHint):
            cls.tool_specs()

    def setup(self) -> None:
        """Called once, after construction and before the worker reports ready."""

    def close(self) -> None:
        """Called once when the worker shuts down."""

    def on_session_end(self, session: Session) -> None:
        """Called when a session is cleaned up or expires."""

    @classmethod
    def tool_specs(cls) -> dict[str, ToolSpec]:
        """Every tool of this adapter class, by name."""
        if cls._krait_specs is not None:
            return cls._krait_specs
        specs: dict[str, ToolSpec] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                if is_tool(attr):
                    spec = build_spec(attr)
                    specs[spec.name] = spec
        cls._krait_specs = specs
        return specs


# third-party modules the bundled adapters and fronts need, and the extra that installs each
_EXTRAS = {
    "scipy": "adapters",
    "sklearn": "adapters",
    "sounddevice": "adapters",
    "qcodes": "qcodes",
    "pandas": "dataframes",
    "pyarrow": "dataframes",
}


def _search_root() -> str:
    """Where a worker imports adapters from first: its working directory (``python -m`` puts it on the path)."""
    return os.getcwd()


class AdapterPathError(ValueError):
    """``module:Class`` names no adapter class: malformed, no such module or class, or not a BaseAdapter.

    Any other exception from :func:`load_adapter` was raised by the adapter's own code (its module's import,
    its constructor or ``setup()``)."""


def load_adapter(path: str) -> BaseAdapter:
    """Import ``module:Class`` and create the adapter; errors name what is wrong."""
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise AdapterPathError(f"adapter must be given as module:Class, got {path!r}")
    if "/" in module_name or module_name.endswith(".py"):
        dotted = module_name.removesuffix(".py").strip("/").replace("/", ".")
        raise AdapterPathError(
            f"{module_name!r} is a file path: name the module as Python imports it, {dotted}:{class_name}, "
            f"from the directory that holds it ({_search_root()})"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # the adapter's module (or a package above it) is missing; a module *it* imports is its own error
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AdapterPathError(
                f"No module named {exc.name!r} (modules are imported from {_search_root()})"
            ) from None
        hint = _EXTRAS.get((exc.name or "").partition(".")[0])
        if hint is not None:
            exc.add_note(f"{exc.name} comes with Krait's {hint!r} extra: pip install 'krait[{hint}]'")
        raise
    try:
        cls: Any = getattr(module, class_name)
    except AttributeError:
        raise AdapterPathError(f"module {module_name!r} has no class {class_name!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseAdapter)):
        raise AdapterPathError(f"{path} is not a subclass of python_worker.BaseAdapter")
    adapter = cls()
    adapter.setup()
    return adapter
