"""multipart/form-data (RFC 7578) for the adapters that take files: the strict reader of a client's form, the
writer that forwards its parts (each with its own header block and bytes) or writes new ones, and their Part."""

from __future__ import annotations

import re
from collections.abc import Container, Sequence
from dataclasses import dataclass

from adapters.internal import InvalidRequest

FORM_DATA = "multipart/form-data"
MAX_PARTS = 64
MAX_PART_HEADERS = 16 * 1024  # bytes in one part's header block
MAX_BOUNDARY = 70  # RFC 2046
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an RFC 9110 token: no quotes needed
# one `; name=value` (or an empty `;`, which RFC 9110 allows); a quoted value may hold \-escapes
_PARAM = re.compile(rf"""\s*;\s*(?:({_TOKEN.pattern})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"\\]*)))?\s*""")
_ESCAPED = re.compile(r"\\(.)")
_BAD_IN_HEADER = re.compile(rb"[\r\n\x00]")
_QUOTED_IN_NAME = re.compile(r'[\x00-\x1f"]')  # HTML5's form encoding: percent-escaped


@dataclass(slots=True)
class Part:
    """One part of a form: its field name, file name and type (files only), its content, and its header block
    as the client wrote it (forwarded unchanged; b"" for a part made here, whose headers are written from
    name, filename and content_type)."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes
    raw_headers: bytes = b""


# -- reading ----------------------------------------------------------------------------------------


def media_type(content_type: str) -> str:
    """The media type of a Content-Type, lower case, without its parameters."""
    return content_type.partition(";")[0].strip().lower()


def boundary(content_type: str) -> str:
    """The boundary parameter of a multipart Content-Type: 1 to 70 printable ASCII characters. The parameter
    list must parse and name the boundary once (InvalidRequest otherwise)."""
    _, semi, rest = content_type.partition(";")
    params = _params(semi + rest)
    value = params.get("boundary") if params is not None else None
    if value is None or not 1 <= len(value) <= MAX_BOUNDARY or not value.isascii() or not value.isprintable():
        raise InvalidRequest("the multipart/form-data Content-Type has no valid boundary")
    return value


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """A strict multipart/form-data reader (RFC 7578): a preamble is ignored; each part has a header block
    with one `Content-Disposition: form-data` naming it, and never holds its own boundary; at least one part,
    at most MAX_PARTS; the body ends with the closing delimiter (an epilogue is ignored). Names and file
    names are returned as sent (HTML5's %22 escapes are kept; only quoted-string \\-escapes are undone).
    InvalidRequest on anything else; the body's size is bounded by the caller's body limit."""
    if media_type(content_type) != FORM_DATA:
        raise InvalidRequest(f"the Content-Type is {media_type(content_type)!r}, not {FORM_DATA}")
    delim = b"--" + boundary(content_type).encode("ascii")
    sep = b"\r\n" + delim
    if body.startswith(delim):
        pos = len(delim)
    else:  # a preamble before the first delimiter is allowed, and ignored
        at = body.find(sep)
        if at < 0:
            raise InvalidRequest("the multipart body has no part: its boundary is not in it")
        pos = at + len(sep)
    parts: list[Part] = []
    while not body.startswith(b"--", pos):
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise InvalidRequest("the multipart body is malformed: a delimiter line has trailing text")
        end = body.find(sep, eol + 2)
        if end < 0:
            raise InvalidRequest("the multipart body is cut short: it is not closed by its final delimiter")
        if len(parts) == MAX_PARTS:
            raise InvalidRequest(f"the multipart body has more than {MAX_PARTS} parts")
        parts.append(_part(body[eol + 2:end], delim))
        pos = end + len(sep)
    if not parts:
        raise InvalidRequest("the multipart body has no part")
    return parts


def text_fields(parts: Sequence[Part], names: Container[str]) -> dict[str, str]:
    """The named fields of a form as text: each a text part (not a file), given at most once, in UTF-8
    (InvalidRequest naming the field otherwise). Parts with other names are left out."""
    texts: dict[str, str] = {}
    for p in parts:
        if p.name not in names:
            continue
        if p.filename is not None:
            raise InvalidRequest(f"the form field {p.name!r} must be a text field, not a file", p.name)
        if p.name in texts:
            raise InvalidRequest(f"the form field {p.name!r} is given twice", p.name)
        try:
            texts[p.name] = p.data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"the form field {p.name!r} is not UTF-8 text", p.name) from None
    return texts


def _part(chunk: bytes, delim: bytes) -> Part:
    head, found, data = chunk.partition(b"\r\n\r\n")
    if not found:
        raise InvalidRequest("a multipart part has no header block")
    if len(head) > MAX_PART_HEADERS:
        raise InvalidRequest(f"a multipart part's header block is longer than {MAX_PART_HEADERS} bytes")
    if delim in chunk:  # so that every part read can be forwarded under the same boundary
        raise InvalidRequest("a multipart part contains its own boundary")
    headers: dict[bytes, str] = {}
    for line in head.split(b"\r\n"):
        key, colon, value = line.partition(b":")
        key = key.strip().lower()
        if not colon or not key or _BAD_IN_HEADER.search(line):
            raise InvalidRequest("a multipart part has a malformed header line")
        if key in headers and key in (b"content-disposition", b"content-type"):
            raise InvalidRequest(f"a multipart part has more than one {key.decode('latin-1')} header")
        headers[key] = value.strip().decode("utf-8", "replace")
    disposition = headers.get(b"content-disposition")
    if disposition is None:
        raise InvalidRequest("a multipart part has no name: it needs a 'Content-Disposition: form-data' header")
    kind, semi, rest = disposition.partition(";")
    if kind.strip().lower() != "form-data":
        raise InvalidRequest("a multipart part is not form-data: its Content-Disposition must be form-data")
    params = _params(semi + rest)
    if params is None:
        raise InvalidRequest("a multipart part has a malformed Content-Disposition (or names a parameter twice)")
    name = params.get("name")
    if not name:
        raise InvalidRequest("a multipart part has no name in its Content-Disposition")
    return Part(name, params.get("filename"), headers.get(b"content-type"), data, head)


def _params(text: str) -> dict[str, str] | None:
    """`; name=value` parameters, names lower-cased, quoted values unescaped; None when the text does not
    parse as a whole or names a parameter twice."""
    params: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _PARAM.match(text, pos)
        if m is None:
            return None
        if m.group(1):
            key = m.group(1).lower()
            if key in params:
                return None
            params[key] = _ESCAPED.sub(r"\1", m.group(2)) if m.group(2) is not None else m.group(3)
        pos = m.end()
    return params


# -- writing ----------------------------------------------------------------------------------------


def encode_multipart(parts: Sequence[Part], boundary: str) -> bytes:
    """The parts as a multipart/form-data body; a part read from a client keeps its own header block.
    ValueError when there is no part, the boundary is not valid, or it occurs inside a part (choose another)."""
    delim = b"--" + _checked_boundary(boundary)
    if not parts:
        raise ValueError("a multipart body needs at least one part")
    out: list[bytes] = []
    for p in parts:
        head = p.raw_headers or _headers(p)
        if delim in head or delim in p.data:
            raise ValueError("the boundary occurs inside a part; choose another")
        if b"\r\n\r\n" in head:
            raise ValueError("a part's header block holds an empty line")
        out += [delim, b"\r\n", head, b"\r\n\r\n", p.data, b"\r\n"]
    out += [delim, b"--\r\n"]
    return b"".join(out)


def form_content_type(boundary: str) -> str:
    """The Content-Type of a form written with this boundary (quoted when it is not a token)."""
    _checked_boundary(boundary)
    quoted = boundary if _TOKEN.fullmatch(boundary) else '"' + boundary.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{FORM_DATA}; boundary={quoted}"


def _checked_boundary(boundary: str) -> bytes:
    if not 1 <= len(boundary) <= MAX_BOUNDARY or not boundary.isascii() or not boundary.isprintable():
        raise ValueError(f"a boundary is 1 to {MAX_BOUNDARY} printable ASCII characters")
    return boundary.encode("ascii")


def _headers(p: Part) -> bytes:
    if not p.name:
        raise ValueError("a part needs a name")
    line = f'Content-Disposition: form-data; name="{_quote(p.name)}"'
    if p.filename is not None:
        line += f'; filename="{_quote(p.filename)}"'
    if p.content_type:
        if _BAD_IN_HEADER.search(p.content_type.encode("utf-8")):
            raise ValueError("a part's content type holds a line break")
        line += f"\r\nContent-Type: {p.content_type}"
    return line.encode("utf-8")


def _quote(value: str) -> str:
    """A name in quotes, as HTML5's form encoding (and httpx) write it: quotes and control characters
    percent-escaped, a backslash escaped (the reader undoes quoted-string escapes)."""
    return _QUOTED_IN_NAME.sub(lambda m: f"%{ord(m.group(0)):02X}", value.replace("\\", "\\\\"))
