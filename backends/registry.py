"""Backends by name: ``load_backend("docker", instance=...)``.

Each backend module is imported the first time it is asked for, so an engine
SDK stays an optional extra (``pip install 'swapvisor[docker]'``): a missing
dependency surfaces here as ``BackendNotInstalled`` naming the extra, not as an
ImportError at swapvisor's start.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from backends.base import BackendError, BackendNotInstalled

if TYPE_CHECKING:
    from types import ModuleType

    from backends.base import Backend


@dataclass(frozen=True, slots=True)
class _Entry:
    module: str
    cls: str
    extra: str | None  # the pyproject extra that brings its dependencies


BACKENDS: dict[str, _Entry] = {
    "native": _Entry("backends.native", "NativeBackend", None),
    "docker": _Entry("backends.docker", "DockerBackend", "docker"),
    "podman": _Entry("backends.podman", "PodmanBackend", None),
    "mock": _Entry("backends.mock", "MockBackend", None),
}


def load_backend(kind: str, **kwargs: object) -> Backend:
    """Import ``backends.<kind>`` and build its backend with ``kwargs``.

    The container backends take ``instance`` (required) and ``engine_url``;
    the native backend takes nothing; the mock backend an optional
    ``instance``.
    """
    module = _import(kind)
    factory = getattr(module, BACKENDS[kind].cls)
    return cast("Backend", factory(**kwargs))


def ensure_installed(kind: str) -> None:
    """Raise (BackendNotInstalled naming the extra) unless ``kind`` can be made."""
    _import(kind)


def _import(kind: str) -> ModuleType:
    entry = BACKENDS.get(kind)
    if entry is None:
        raise BackendError(
            f"unknown backend {kind!r}; choose one of {', '.join(sorted(BACKENDS))}"
        )
    try:
        return importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:
        # Only a missing third-party package means "install the extra"; a
        # broken swapvisor module must surface as itself.
        if exc.name is None or exc.name.split(".")[0] in ("backends", "controller"):
            raise
        hint = (
            f"pip install 'swapvisor[{entry.extra}]'" if entry.extra else "pip install"
        )
        raise BackendNotInstalled(
            f"the {kind} backend needs the Python package {exc.name!r}: "
            f"{hint}{'' if entry.extra else ' ' + exc.name}"
        ) from exc
