"""Profiles: the active profile's pins rewrite a requested name before routing
(llama-swap.md §1.10). In-memory state, reset on start and on every reload."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from controller.config.model import Config


class Profiles:
    """The active profile, if any."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.active: str | None = None

    def set_active(self, name: str | None) -> bool:
        """Switch profiles; True if it changed. Raises NotFound."""
        if name is not None and name not in self.config.profiles:
            raise NotFound(f'profile "{name}" not found')
        changed = name != self.active
        self.active = name
        return changed

    def pins(self) -> dict[str, str | None]:
        if self.active is None:
            return {}
        return dict(self.config.profiles[self.active].pins)

    def rewrite(self, name: str) -> str:
        """The pin target for ``name`` (unchanged if not pinned)."""
        pins = self.pins()
        if name not in pins:
            return name
        target = pins[name]
        if not target:
            raise BadRequest(
                f"model {name!r} is disabled by the active profile {self.active!r}"
            )
        return target

    def rewrite_path(self, raw_path: str) -> str:
        """``/upstream/<pin>/...``: the longest matching pin wins."""
        for pin in sorted(self.pins(), key=len, reverse=True):
            target = self.pins()[pin]
            if target and (raw_path == pin or raw_path.startswith(pin + "/")):
                return target + raw_path[len(pin) :]
        return raw_path
