"""Observability, beside the engine and fed by its events: logs, the event
bus, the per-request recorder, activity, token usage, captures, metrics,
performance samples and the GPU probe, and how they are wired to an app."""
