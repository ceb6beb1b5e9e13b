"""Field checks with llama-swap's exact texts that reach beyond the YAML: a
``store.path`` on the file system, a sampling interval in Go's duration
wording. Raise ValueError, as pydantic validators do."""

from __future__ import annotations

import errno
import os
import stat

MIN_EVERY_S = 5.0


def check_every(every_s: float) -> float:
    """``every_s`` if it is at least 5 s, else llama-swap's error as ValueError."""
    if every_s < MIN_EVERY_S:
        raise ValueError(
            f"performance: every must be at least 5s, got {_go_duration(every_s)}"
        )
    return every_s


def _go_duration(seconds: float) -> str:
    """Go's ``time.Duration`` text for durations under a minute."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _errno_text(code: int) -> str:
    """Go's lower-case errno wording (``permission denied``)."""
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


def validate_store_path(path: str) -> None:
    """llama-swap's ``store.path`` check; raises ValueError with its texts."""
    if not path.strip():
        raise ValueError("store.path must not be empty")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        directory = os.path.dirname(path) or "."
        if not os.access(directory, os.W_OK):
            code = errno.EACCES if os.path.exists(directory) else errno.ENOENT
            why = _errno_text(code)
            raise ValueError(
                f"store.path: directory {directory} is not writable: {why}"
            ) from None
        return
    except OSError as exc:
        raise ValueError(
            f"store.path: stat {path}: {_errno_text(exc.errno or 0)}"
        ) from exc
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"store.path: {path} is a directory, not a file")
    if not os.access(path, os.W_OK):
        raise ValueError(
            f"store.path: {path} is not writable: {_errno_text(errno.EACCES)}"
        )
