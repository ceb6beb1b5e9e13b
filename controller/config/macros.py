"""llama-swap's macro language: ``${env.NAME}`` on the raw text, then ``${NAME}``.

Owns the text-level rules of llama-swap.md §1.1 and §1.4: env substitution with
its escaping, macro-name validation, last-declared-first substitution, typed
substitution of a value that is exactly one macro, and ``${PORT}`` allocation.
It knows nothing of pydantic; ``controller.config`` calls it on plain data.
"""

from __future__ import annotations

import math
import os
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from controller.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

Scalar = str | int | float | bool
RESERVED = ("PID", "PORT", "MODEL_ID", "SLOT_DIR")
_ENV_RE = re.compile(r"\$\{env\.([a-zA-Z_][a-zA-Z0-9_]*)\}")
_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_ANY_MACRO_RE = re.compile(r"\$\{([^}]*)\}")


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``${env.NAME}`` in raw YAML text, skipping ``#`` comments."""
    env = os.environ if environ is None else environ
    return "".join(_expand_env_line(line, env) for line in text.splitlines(True))


def _expand_env_line(line: str, env: Mapping[str, str]) -> str:
    cut = _comment_start(line)
    code, comment = line[:cut], line[cut:]
    return _ENV_RE.sub(lambda m: _env_value(m.group(1), env), code) + comment


def _env_value(name: str, env: Mapping[str, str]) -> str:
    if name not in env:
        raise ConfigError(f"environment variable '{name}' is not set")
    value = env[name]
    if any(c in value for c in "\n\r\0"):
        raise ConfigError(
            f"environment variable '{name}' contains newlines or null bytes which "
            "are not allowed in YAML substitution"
        )
    # Escaped so the value survives inside a double-quoted YAML string.
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _comment_start(line: str) -> int:
    """Index where a YAML comment starts (len(line) if none), quote-aware."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"" and line[:i].rstrip()[-1:] in ("", ":", "[", "{", ",", "-"):
            quote = ch  # only a quote that starts a scalar opens a string
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return i
    return len(line)


def validate_macros(macros: Any, where: str = "") -> dict[str, Scalar]:
    """Check a ``macros`` mapping's names and values; return it in order."""
    prefix = f"{where}: " if where else ""
    if macros is None:
        return {}
    if not isinstance(macros, dict):
        raise ConfigError(f"{prefix}macros must be a mapping of name to value")
    out: dict[str, Scalar] = {}
    for name, value in macros.items():
        name = str(name)
        if len(name) >= 64:
            raise ConfigError(
                f"{prefix}macro name '{name}' exceeds maximum length of 63 characters"
            )
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"{prefix}macro name '{name}' contains invalid characters, must "
                "match pattern ^[a-zA-Z0-9_-]+$"
            )
        if name in RESERVED:
            raise ConfigError(f"{prefix}macro name '{name}' is reserved")
        if not isinstance(value, str | int | float | bool):
            raise ConfigError(
                f"{prefix}macro '{name}' has invalid type {type(value).__name__}, "
                "must be a scalar type (string, int, float, or bool)"
            )
        if isinstance(value, str) and "${" + name + "}" in value:
            raise ConfigError(f"{prefix}macro '{name}' contains self-reference")
        out[name] = value
    return out


def _text(value: Scalar) -> str:
    """A macro value as llama-swap interpolates it (Go's ``%v``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value)
    return str(value)


def go_float(value: float) -> str:
    """Go's ``%v`` of a float64, ``strconv.FormatFloat(v, 'g', -1, 64)``.

    The shortest digits that read back as ``value`` (Python's ``repr`` finds
    the same ones), in exponent form when the decimal exponent is below -4 or
    at least 6: Go's ftoa.go, "if precision was the shortest possible, use
    precision 6 for this decision". So ``1.0`` is ``1``, ``1e8`` is ``1e+08``.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    exact = Decimal(repr(abs(value))).normalize()
    digits = "".join(map(str, exact.as_tuple().digits))
    point = len(digits) + int(exact.as_tuple().exponent)  # 0.DIGITS x 10^point
    return sign + go_layout(digits, point)


def go_layout(digits: str, point: int) -> str:
    """Go's ``'g'`` layout of the significant ``digits`` of 0.DIGITS x 10^point."""
    exp = point - 1
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
        return f"{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return f"{digits[:point]}.{digits[point:]}"


def substitute(value: Any, macros: Mapping[str, Scalar]) -> Any:
    """Apply macros to every string inside ``value`` (map keys untouched).

    Last-declared first, so a macro may use macros declared before it; a string
    that is exactly ``${NAME}`` becomes the macro's typed value.
    """
    if isinstance(value, str):
        return _substitute_str(value, list(macros.items()))
    if isinstance(value, dict):
        return {k: substitute(v, macros) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, macros) for v in value]
    return value


def _substitute_str(text: str, ordered: list[tuple[str, Scalar]]) -> Any:
    for name, macro in reversed(ordered):
        token = "${" + name + "}"
        if text == token:
            if not isinstance(macro, str):
                return macro  # typed: an int stays an int
            text = macro  # and earlier-declared macros still apply to it
        elif token in text:
            text = text.replace(token, _text(macro))
    return text


def leftover_macros(text: str) -> list[str]:
    """Names of the ``${...}`` references still present in ``text``."""
    return _ANY_MACRO_RE.findall(text)


def strip_cmd_comments(cmd: str) -> str:
    """Drop whole-line ``#`` comments, as llama-swap does before expansion."""
    return "\n".join(
        line for line in cmd.splitlines() if not line.lstrip().startswith("#")
    )
