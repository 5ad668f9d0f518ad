"""Pure tests of adapters.multipart, the form reader and writer the images and videos adapters share: what a
strict reader refuses, what it keeps as sent, the writer, and encode-then-parse round trips."""

from __future__ import annotations

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.internal import InvalidRequest
from adapters.multipart import _headers
from adapters.multipart import (MAX_PARTS, Part, boundary, encode_multipart, form_content_type, media_type,
                                parse_multipart, text_fields)

CT = "multipart/form-data; boundary=b"
FILE = b"\x89PNG\r\n\x1a\n--not-a-boundary\r\n\r\n" + bytes(range(256))


def one(head: bytes, data: bytes = b"1", bound: bytes = b"b") -> bytes:
    return b"--" + bound + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n--" + bound + b"--\r\n"


NAMED = b'Content-Disposition: form-data; name="a"'


# -- the reader ---------------------------------------------------------------------------------------


def test_sdk_form_is_read_exactly() -> None:
    req = httpx2.Request("POST", "http://gw/", data={"prompt": 'a "quoted" fox'},
                         files=[("image[]", ('a "b"\\c.png', FILE, "image/png")),
                                ("mask", ("m.png", b"", "image/png"))])
    parts = parse_multipart(req.read(), req.headers["content-type"])
    assert [(p.name, p.filename, p.content_type, p.data) for p in parts] == [
        ("prompt", None, None, b'a "quoted" fox'),
        ("image[]", 'a %22b%22\\c.png', "image/png", FILE),  # HTML5's %22 kept as sent; the \-escape undone
        ("mask", "m.png", "image/png", b""),
    ]
    assert parts[1].raw_headers.startswith(b'Content-Disposition: form-data; name="image[]"; filename="a %22b%22\\\\c')


def test_preamble_epilogue_padding_and_quoted_boundary() -> None:
    body = (b"ignored preamble\r\n--a b \t\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\nv\r\n"
            b"--a b--\r\nignored epilogue")
    parts = parse_multipart(body, 'Multipart/Form-Data; charset=utf-8; boundary="a b"')
    assert [(p.name, p.data) for p in parts] == [("k", b"v")]


def test_disposition_parameters() -> None:
    head = b"content-disposition:form-data;NAME=k ; filename=f.txt;;\r\ncontent-type:  text/plain  \r\nX-Other: 1"
    (part,) = parse_multipart(one(head), CT)
    assert (part.name, part.filename, part.content_type, part.raw_headers) == ("k", "f.txt", "text/plain", head)
    (part,) = parse_multipart(one(b'Content-Disposition: form-data; name="a\\"b"; filename=""'), CT)
    assert (part.name, part.filename) == ('a"b', "")


@pytest.mark.parametrize("body, ctype, message", [
    (b'{"prompt": "x"}', "application/json", "not multipart/form-data"),
    (one(NAMED), "multipart/form-data", "boundary"),
    (one(NAMED)[:-6], CT, "not closed"),
    (b"nothing here", CT, "no part"),
    (b"--b--\r\n", CT, "no part"),
    (b"--b", CT, "trailing text"),
    (one(NAMED).replace(b"--b\r\n", b"--b junk\r\n", 1), CT, "trailing text"),
    (one(b"Content-Type: text/plain"), CT, "no name"),
    (one(b"Content-Disposition: form-data"), CT, "no name"),
    (one(b'Content-Disposition: form-data; name=""'), CT, "no name"),
    (one(b'Content-Disposition: attachment; name="a"'), CT, "not form-data"),
    (one(NAMED).replace(b"\r\n\r\n", b"\r\n", 1), CT, "no header block"),
    (one(b'Content-Disposition form-data; name="a"'), CT, "malformed header"),
])
def test_malformed_forms_are_refused(body: bytes, ctype: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_multipart(body, ctype)


def test_part_count_limit() -> None:
    parts = [Part(f"f{i}", None, None, b"x") for i in range(MAX_PARTS + 1)]
    assert len(parse_multipart(encode_multipart(parts[:-1], "b"), CT)) == MAX_PARTS
    with pytest.raises(InvalidRequest, match=f"more than {MAX_PARTS}"):
        parse_multipart(encode_multipart(parts, "b"), CT)


def test_text_fields() -> None:
    parts = [Part("prompt", None, None, "a fox 🦊".encode()), Part("image", "x.png", "image/png", FILE),
             Part("n", None, None, b"")]
    assert text_fields(parts, ("prompt", "n", "size")) == {"prompt": "a fox 🦊", "n": ""}
    for bad, message in [([Part("n", None, None, b"1"), Part("n", None, None, b"2")], "given twice"),
                         ([Part("n", None, None, b"\xff")], "not UTF-8"),
                         ([Part("n", "n.txt", None, b"1")], "must be a text field")]:  # images read it as text
        with pytest.raises(InvalidRequest, match=message) as exc:
            text_fields(bad, ("n",))
        assert exc.value.param == "n"


# -- where the images and videos copies differed: the stricter rule, or the ambiguity refused ------------


@pytest.mark.parametrize("head, message", [
    (NAMED + b"\r\nX-Pad: " + b"x" * 16 * 1024, "longer than"),  # videos had no limit on a header block
    (NAMED + b"\r\n: empty name", "malformed header"),  # videos took a header with no name
    (NAMED + b"\r\n" + NAMED.replace(b'"a"', b'"model"'), "more than one content-disposition"),  # images: the
    (NAMED + b"\r\nContent-Type: a/b\r\nContent-Type: c/d", "more than one content-type"),  # last won; videos: both
    (b'Content-Disposition: form-data; name="a"; name="model"', "twice"),  # both: the last name won
    (b'Content-Disposition: form-data; name="a" junk; filename="f"', "malformed Content-Disposition"),  # skipped
    (b"Content-Disposition: form-data; name=a\\b", "malformed Content-Disposition"),  # images unescaped, videos not
    (b'Content-Disposition: form-data; name="a\nContent-Type: x"', "malformed header"),  # a bare LF
    (b'Content-Disposition: form-data; name="a\x00"', "malformed header"),
])
def test_ambiguous_or_oversized_headers_are_refused(head: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_multipart(one(head), CT)


def test_a_part_never_holds_its_own_boundary() -> None:
    """RFC 2046 only forbids it at a line's start; the reader refuses it anywhere, so that every form read
    can be written again under its own boundary (videos forwards the client's)."""
    with pytest.raises(InvalidRequest, match="its own boundary"):
        parse_multipart(one(NAMED, b"data--b0und more", b"b0und"), "multipart/form-data; boundary=b0und")
    with pytest.raises(ValueError, match="choose another"):
        encode_multipart([Part("f", "f.bin", None, b"data--xyz")], "xyz")
    with pytest.raises(ValueError, match="choose another"):
        encode_multipart([Part("f", None, None, b"", b'Content-Disposition: form-data; name="--xyz"')], "xyz")


@pytest.mark.parametrize("ctype, expected", [
    ("multipart/form-data; boundary=b", "b"),
    ('multipart/form-data; boundary="a \\"q\\" b"', 'a "q" b'),  # images stopped at the first quote
    ("multipart/form-data;BOUNDARY=b;", "b"),
    ("multipart/form-data; boundary=" + "x" * 70, "x" * 70),
])
def test_boundary(ctype: str, expected: str) -> None:
    assert boundary(ctype) == expected


@pytest.mark.parametrize("ctype", [
    "multipart/form-data",
    "multipart/form-data; boundary=",
    'multipart/form-data; boundary=""',
    "multipart/form-data; boundary=" + "x" * 71,  # images cut it to 70 characters
    "multipart/form-data; xboundary=b",  # images found a boundary inside another parameter
    "multipart/form-data; boundary=a b",  # videos read "a b", images "a"
    "multipart/form-data; boundary=bad; boundary=b",  # videos skipped to a later valid one
    "multipart/form-data; boundary=b; boundary=b",
    'multipart/form-data; boundary="a\tb"',
    'multipart/form-data; boundary="é"',
])
def test_invalid_boundaries_are_refused(ctype: str) -> None:
    with pytest.raises(InvalidRequest, match="boundary"):
        boundary(ctype)


# -- the writer ---------------------------------------------------------------------------------------


def test_writer_forwards_raw_headers_and_writes_new_ones() -> None:
    raw = b'content-disposition: form-data; name="img"; filename="a%22.png"\r\nX-Kept: yes'
    body = encode_multipart([Part("img", "ignored", None, FILE, raw),
                             Part('q"\\\r\n', "f.txt", "text/plain", b"v")], "tt-1")
    assert body == (b"--tt-1\r\n" + raw + b"\r\n\r\n" + FILE + b"\r\n--tt-1\r\n"
                    b'Content-Disposition: form-data; name="q%22\\\\%0D%0A"; filename="f.txt"\r\n'
                    b"Content-Type: text/plain\r\n\r\nv\r\n--tt-1--\r\n")
    got = parse_multipart(body, form_content_type("tt-1"))
    assert [(p.name, p.filename, p.raw_headers) for p in got][0] == ("img", "a%22.png", raw)
    assert got[1].name == "q%22\\%0D%0A"  # names come back as written on the wire: escapes are not decoded


def test_form_content_type_quotes_only_when_needed() -> None:
    assert form_content_type("tt-boundary") == "multipart/form-data; boundary=tt-boundary"
    assert form_content_type('a "b"') == 'multipart/form-data; boundary="a \\"b\\""'
    assert boundary(form_content_type('a "b"')) == 'a "b"'
    assert media_type(" Multipart/Form-Data ; boundary=x") == "multipart/form-data"


@pytest.mark.parametrize("parts, bound", [
    ([], "b"),
    ([Part("a", None, None, b"")], ""),
    ([Part("a", None, None, b"")], "x" * 71),
    ([Part("a", None, None, b"")], "a\r\nb"),
    ([Part("", None, None, b"")], "b"),
    ([Part("a", None, "text/plain\r\nX-Injected: 1", b"")], "b"),
    ([Part("a", None, None, b"", b"X: 1\r\n\r\nY: 2")], "b"),
])
def test_writer_refusals(parts: list[Part], bound: str) -> None:
    with pytest.raises(ValueError):
        encode_multipart(parts, bound)


# -- round trips ----------------------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_characters='"\\\r\n', exclude_categories=("Cc", "Cs")))
_parts = st.lists(st.builds(Part, _text.filter(bool), st.none() | _text,
                            st.none() | st.from_regex(r"[a-z]{1,8}/[a-z0-9.+-]{1,12}", fullmatch=True),
                            st.binary(max_size=200) | st.sampled_from([b"", b"\r\n", b"\r\n\r\n--", FILE])),
                  min_size=1, max_size=8)
_boundaries = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=70)


@settings(max_examples=300)
@given(_parts, _boundaries)
def test_encode_then_parse_gives_back_the_parts(parts: list[Part], bound: str) -> None:
    try:
        body = encode_multipart(parts, bound)
    except ValueError:  # the boundary occurs in a part: the writer refuses it, the caller picks another
        delim = ("--" + bound).encode()  # in the data, or in the header block as written (the boundary '"' is
        assert any(delim in p.data or delim in _headers(p) for p in parts)  # in name="a--" though not in the name)
        return
    got = parse_multipart(body, form_content_type(bound))
    assert [(p.name, p.filename, p.content_type, p.data) for p in got] == \
        [(p.name, p.filename, p.content_type, p.data) for p in parts]
    assert encode_multipart(got, bound) == body  # and forwarding what was read changes no byte


@given(st.text(min_size=1, max_size=40), st.none() | st.text(max_size=40), st.binary(max_size=100))
def test_any_name_round_trips_as_html5_writes_it(name: str, filename: str | None, data: bytes) -> None:
    """Quotes and control characters come back percent-escaped (as browsers and httpx send them), anything
    else exactly; a backslash survives its quoted-string escape."""
    def wire(s: str) -> str:
        return "".join(f"%{ord(c):02X}" if c == '"' or ord(c) < 0x20 else c for c in s)

    try:
        body = encode_multipart([Part(name, filename, None, data)], "tt-x")
    except (ValueError, UnicodeEncodeError):
        return
    (got,) = parse_multipart(body, form_content_type("tt-x"))
    assert (got.name, got.filename, got.data) == (wire(name), None if filename is None else wire(filename), data)
