"""The config layer: llama-swap's config.yaml read, expanded, validated and checked."""
