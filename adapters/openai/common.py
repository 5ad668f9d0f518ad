"""Helpers shared by the OpenAI-format modules: a lenient string reader, the request-field checks
Chat Completions and Responses have in common, and the chat rule for an answer's finish reason."""

from __future__ import annotations

from typing import Any, Literal

from adapters.internal import Finish, InvalidRequest

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}  # a function tool without parameters
# reasoning effort -> the internal effort ("xhigh"/"max" have no internal level above "high")
EFFORTS: dict[str, Literal["minimal", "low", "medium", "high"]] = {
    "minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def str_or_empty(value: Any) -> str:
    return value if isinstance(value, str) else ""


def opt_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean", name)
    return value


def number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number from {low} to {high}", name)
    return float(value)


def finish_out(finish: Finish, has_calls: bool) -> Finish:
    """An answer with tool calls finishes with `tool_calls` (agent loops look for it), and only it does."""
    if has_calls and finish == "stop":
        return "tool_calls"
    if not has_calls and finish == "tool_calls":
        return "stop"
    return finish
