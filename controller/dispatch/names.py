"""Names: from the name a client sent to the one that is routed. The active
profile's pins first, then selectors (llama-swap.md §2.1).

One ``Names`` per runtime; both parts are reset on every reload, as in
llama-swap, which rebuilds them with its whole server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.dispatch.profiles import Profiles
from controller.dispatch.selectors import Selectors

if TYPE_CHECKING:
    from controller.config.model import Config
    from controller.engine.runtime import Runtime


class Names:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.profiles = Profiles(runtime.config)
        self.selectors = Selectors(runtime.config, runtime.router.state_of)
        runtime.reload_listeners.append(self._reset)

    def _reset(self, config: Config) -> None:
        self.profiles = Profiles(config)
        self.selectors = Selectors(config, self._runtime.router.state_of)
