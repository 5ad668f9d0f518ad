"""What both Anthropic sides share: Anthropic's thinking-budget floor, the mark on thinking signatures this
gateway writes, and the tolerant type checks. Pure; no I/O."""

from __future__ import annotations

from typing import Any, TypeGuard

MIN_THINKING_BUDGET = 1024  # Anthropic refuses smaller budget_tokens
# Thinking this gateway streams to an Anthropic client never comes from Claude (Claude is passthrough), so
# its signature is marked: "tokentoll:sig:<the upstream's signature>", or UNSIGNED_THINKING when the upstream
# gave none (Claude clients drop unsigned thinking). parse_request takes the mark off; passthrough to
# Claude drops marked thinking, whose signature Claude would refuse.
SIGNATURE_MARK = "tokentoll:"
UNSIGNED_THINKING = "tokentoll:none"


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
