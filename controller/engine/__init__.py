"""The engine: one ``Upstream`` per model owning its state, the scheduler that
decides, the router that carries decisions out, eviction policies, and the
runtime a reload swaps."""
