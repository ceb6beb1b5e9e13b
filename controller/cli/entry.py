"""The ``swapvisor`` command's entry point: bind the address first (the
early listener answers ``/health`` at once), then import the rest."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from controller.cli.early import EarlyListener

if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    early = EarlyListener.start(args)
    from controller.cli import main as cli  # the heavy part: aiohttp, pydantic

    return cli.main(args, early=early)
