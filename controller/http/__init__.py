"""The HTTP layer: one route table, the middlewares it declares, the handlers,
the thin data path (proxy), and the wiring of observability into the app."""
