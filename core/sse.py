"""Server-sent events: an incremental decoder for upstream byte streams and the encoder for clients.
Pure code, no I/O: events may arrive split across reads, with CR, LF or CRLF line ends, comments and keep-alives."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import UpstreamError

MAX_EVENT_BYTES = 16 * 1024 * 1024
BOM = b"\xef\xbb\xbf"


class SSEError(UpstreamError):
    """The upstream sent something that cannot be an event stream (for example an endless line)."""

    code, kind = "upstream_bad_stream", "bad_stream"


@dataclass(slots=True)
class SSEEvent:
    event: str  # the `event:` name, "" when absent
    data: bytes  # data lines joined by b"\n" (per the spec); b"" when the event had none
    has_data: bool  # at least one `data` field was present
    comment: bytes = b""  # the text of comment lines, for keep-alives that carry no data


class SSEDecoder:
    """feed() bytes as they come; it returns every event completed by them, in order. An event that
    spans many reads is joined once, when its end arrives (linear in its size)."""

    __slots__ = ("_parts", "_size", "_held_cr", "_started")

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # an incomplete event, in pieces; no blank line inside
        self._size = 0
        self._held_cr = False
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not self._started:
            self._started = True
            if chunk.startswith(BOM):  # the spec's optional byte-order mark
                chunk = chunk[3:]
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):  # may be the first half of a CRLF split across reads
                chunk = chunk[:-1]
                self._held_cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if not chunk:
            return []
        if self._parts:
            ends_here = b"\n\n" in chunk or (self._parts[-1].endswith(b"\n") and chunk.startswith(b"\n"))
            self._parts.append(chunk)
            self._size += len(chunk)
            if not ends_here:
                if self._size > MAX_EVENT_BYTES:
                    raise SSEError(f"the upstream sent an event over {MAX_EVENT_BYTES} bytes without a blank line")
                return []
            buf = b"".join(self._parts)
            self._parts, self._size = [], 0
        else:
            buf = chunk
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            if block:
                ev = parse_block(block)
                if ev is not None:
                    events.append(ev)
        rest = buf[start:] if start else buf
        if rest:
            if len(rest) > MAX_EVENT_BYTES:
                raise SSEError(f"the upstream sent an event over {MAX_EVENT_BYTES} bytes without a blank line")
            self._parts, self._size = [rest], len(rest)
        return events

    def finish(self) -> list[SSEEvent]:
        """At end of stream: an unterminated last event that carries data is still delivered."""
        rest = b"".join(self._parts).strip(b"\n")
        self._parts, self._size, self._held_cr = [], 0, False
        if not rest:
            return []
        ev = parse_block(rest)
        return [ev] if ev is not None and ev.has_data else []


def parse_block(block: bytes) -> SSEEvent | None:
    """One event's lines (no blank line inside). id: and retry: are dropped on purpose."""
    if block.startswith(b"data: ") and b"\n" not in block:  # the common case, fast
        return SSEEvent("", block[6:], True)
    event = ""
    data: list[bytes] = []
    comments: list[bytes] = []
    for line in block.split(b"\n"):
        if not line:
            continue
        if line[0] == 0x3A:  # ':'
            comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    if data:
        return SSEEvent(event, b"\n".join(data), True)
    if event:
        return SSEEvent(event, b"", False)
    if comments:
        return SSEEvent("", b"", False, b" ".join(comments) or b"keep-alive")
    return None


def encode(data: bytes, event: str = "") -> bytes:
    """One event for a client; multi-line data becomes several data: lines."""
    if b"\n" in data:
        data = data.replace(b"\n", b"\ndata: ")
    if event:
        return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"


def encode_comment(text: bytes = b"keep-alive") -> bytes:
    return b": " + text + b"\n\n"
