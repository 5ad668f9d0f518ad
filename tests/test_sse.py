"""The SSE decoder, directly: any split of the byte stream, any line ending, gives the same events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from core.sse import MAX_EVENT_BYTES, SSEDecoder, SSEError, encode, encode_comment

import pytest

EVENTS = [
    (b"", b'{"a":1}'),
    (b"message_start", b'{"type":"message_start","text":"h\xc3\xa9llo \xf0\x9f\x8c\x8d"}'),
    (b"", b"[DONE]"),
]


def render(line_end: bytes, with_noise: bool) -> bytes:
    out = b""
    if with_noise:
        out += b": keep-alive" + line_end + line_end + line_end
    for name, data in EVENTS:
        if name:
            out += b"event: " + name + line_end
        if with_noise:
            out += b"id: 42" + line_end + b"retry: 100" + line_end + b": comment" + line_end
        out += b"data: " + data + line_end + line_end
    return out


def decode_all(pieces: list[bytes]) -> list[tuple[str, bytes]]:
    dec = SSEDecoder()
    events = []
    for piece in pieces:
        events += dec.feed(piece)
    events += dec.finish()
    return [(e.event, e.data) for e in events if e.has_data]


EXPECTED = [(name.decode(), data) for name, data in EVENTS]


@settings(max_examples=300, deadline=None)
@given(line_end=st.sampled_from([b"\n", b"\r\n", b"\r"]), noise=st.booleans(), data=st.data())
def test_any_split_any_line_end(line_end: bytes, noise: bool, data: st.DataObject) -> None:
    raw = render(line_end, noise)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
    assert decode_all(pieces) == EXPECTED


def test_byte_by_byte_crlf() -> None:
    raw = render(b"\r\n", True)
    assert decode_all([raw[i:i + 1] for i in range(len(raw))]) == EXPECTED


def test_comment_only_block_is_a_keepalive_not_data() -> None:
    events = SSEDecoder().feed(b": ping\n\n")
    assert len(events) == 1 and not events[0].has_data and events[0].comment == b"ping"


def test_multi_line_data_is_joined_and_reencoded() -> None:
    events = SSEDecoder().feed(b"data: {\"a\":\ndata: 1}\n\n")
    assert events[0].data == b'{"a":\n1}'
    assert encode(events[0].data) == b'data: {"a":\ndata: 1}\n\n'


def test_data_without_space_and_field_without_colon() -> None:
    events = SSEDecoder().feed(b"data:x\n\ndata\n\n")
    assert [(e.data, e.has_data) for e in events] == [(b"x", True), (b"", True)]


def test_unterminated_last_event_is_delivered_at_eof() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: [DONE]\n") == []
    assert [e.data for e in dec.finish()] == [b"[DONE]"]


def test_endless_line_is_refused() -> None:
    dec = SSEDecoder()
    with pytest.raises(SSEError):
        dec.feed(b"data: " + b"x" * (MAX_EVENT_BYTES + 1))


def test_encoders() -> None:
    assert encode(b"{}", "ping") == b"event: ping\ndata: {}\n\n"
    assert encode_comment() == b": keep-alive\n\n"
