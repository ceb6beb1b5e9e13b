"""The route table's data: which paths are inference endpoints, and how.

Kept apart from the handlers so the list reads as llama-swap.md §2.4 does.
"""

from __future__ import annotations

# POST, model in the JSON body (or a form field, for multipart endpoints).
POST_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/embeddings",
    "/reranking",
    "/rerank",
    "/v1/rerank",
    "/v1/reranking",
    "/infill",
    "/completion",
    "/v1/audio/speech",
    "/v1/audio/voices",
    "/v1/audio/transcriptions",
    "/v1/images/generations",
    "/v1/images/edits",
    "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img",
    "/audioapi/v1/tasks/run",
    # Versionless aliases, forwarded with "/v" stripped.
    "/v/chat/completions",
    "/v/responses",
    "/v/completions",
    "/v/messages",
    "/v/messages/count_tokens",
    "/v/embeddings",
    "/v/rerank",
    "/v/reranking",
)

# GET, model in ?model=.
GET_ENDPOINTS = ("/v1/audio/voices", "/sdapi/v1/loras", "/props")

# Prefixes removed before forwarding (llama-swap.md §2.1, dispatch).
_STRIP = ("/audioapi", "/v")


def upstream_path(path: str) -> str:
    """The path an inference request is forwarded to."""
    for prefix in _STRIP:
        if path.startswith(prefix + "/"):
            return path[len(prefix) :]
    return path


def is_anthropic(path: str) -> bool:
    """Routes whose clients expect Anthropic's error shape."""
    return path.startswith(("/v1/messages", "/v/messages"))
