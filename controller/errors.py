"""The controller's error tree and how each error looks on the wire.

Handlers raise; ``controller.http.middleware``'s error middleware renders once, in the
client's own shape (OpenAI-style on most routes, Anthropic's on /v1/messages)::

    ControllerError                       status
    ├── ConfigError                         -   a config that cannot be loaded
    ├── BadRequest                         400  invalid JSON, no model named
    ├── ModelNotFound                      404  unknown model id or alias
    ├── NotFound                           404  unknown path or resource
    ├── Conflict                           409  this path may not load a model
    ├── Overloaded                         429  concurrencyLimit reached
    ├── UpstreamError                      502  upstream died or dropped the connection
    ├── UpstreamStartError                 503  failed to start (exited, bad cmd)
    │   └── ModelUnloaded                  503  unloaded while the request waited
    │   └── CrashLoop                      503  quarantined after failed starts
    ├── InsufficientMemory                 503  the model can never fit the budget
    ├── ShuttingDown                       503  swapvisor is stopping
    └── UpstreamStartTimeout               504  health deadline passed
"""

from __future__ import annotations

import json
import math
from typing import ClassVar

SRC = "swapvisor"

_TYPE_CODE: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "unauthorized"),
    403: ("authentication_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}

# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPE: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}


class ControllerError(Exception):
    """Root of the controller's errors. ``status`` is the HTTP status."""

    status: ClassVar[int] = 500
    code: str | None = None
    retry_after: int | None = None
    param: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ControllerError):
    """The configuration cannot be loaded; the message names the YAML path."""


class BadRequest(ControllerError):
    status = 400


class ModelNotFound(ControllerError):
    status = 404
    code = "model_not_found"
    param = "model"


class NotFound(ControllerError):
    status = 404


class Overloaded(ControllerError):
    status = 429
    code = "concurrency_limit"
    retry_after = 1


class UpstreamError(ControllerError):
    status = 502
    code = "upstream_error"


class UpstreamStartError(ControllerError):
    status = 503
    code = "upstream_start_failed"
    retry_after = 1


class ModelUnloaded(UpstreamStartError):
    code = "model_unloaded"


class CrashLoop(UpstreamStartError):
    """The model failed to start too often in a row: no start is attempted
    until its quarantine ends (``retry_after`` says when)."""

    code = "crash_loop"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after_s))


class InsufficientMemory(ControllerError):
    """``use: resources``: the model needs more than the budget can ever give
    it (or than what persistent models leave); the message says how much it
    needs and how much there is. Answered at once, nothing is stopped."""

    status = 503
    code = "insufficient_memory"


class ShuttingDown(ControllerError):
    status = 503
    code = "shutting_down"
    retry_after = 5


class UpstreamStartTimeout(ControllerError):
    status = 504
    code = "health_check_timeout"


def openai_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> bytes:
    """llama-swap's envelope: ``{src, error: {message, type, param, code}}``."""
    etype, default_code = _TYPE_CODE.get(
        status,
        ("invalid_request_error", "invalid_request")
        if status < 500
        else ("server_error", "internal_error"),
    )
    body = {
        "src": SRC,
        "error": {
            "message": message,
            "type": etype,
            "param": param,
            "code": code or default_code,
        },
    }
    return json.dumps(body).encode()


def anthropic_body(status: int, message: str) -> bytes:
    """Anthropic's shape: ``{type: "error", error: {type, message}}``."""
    etype = _ANTHROPIC_TYPE.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    body = {"type": "error", "error": {"type": etype, "message": message}, "src": SRC}
    return json.dumps(body).encode()


class Conflict(ControllerError):
    """The request may not load a model (ignored paths and websockets)."""

    status = 409
    code = "model_not_loaded"
