"""The Anthropic Messages wire format, as a package: `client` for callers speaking /v1/messages, `upstream`
for an Anthropic provider, `common` for what both sides read."""

from adapters.anthropic import client, upstream

__all__ = ["client", "upstream"]
