"""What most config tests do: load a config text, or get its error or its
warnings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from controller.config.loader import parse_config
from controller.errors import ConfigError

if TYPE_CHECKING:
    from controller.config.model import Config


def load(text: str) -> Config:
    return parse_config(text).config


def error_of(text: str) -> str:
    """The message of the ConfigError that ``text`` raises."""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return str(info.value)


def warnings_of(text: str) -> tuple[str, ...]:
    return parse_config(text).warnings
