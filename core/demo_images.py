"""The demo provider's images (POST /images/generations and /images/edits, OpenAI's shape): n small PNGs whose
colours come from a hash of the prompt (and of the images to edit), deterministic, as b64_json only."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import zlib

import orjson

from adapters.internal import InvalidRequest
from adapters.openai import images as openai_images
from core.demo_response import DemoResponse

SIDE = 8  # pixels: the demo's images are 8x8


async def answer(method: str, path: str, body: bytes | None, content_type: str | None) -> DemoResponse:
    if method != "POST" or path not in ("/images/generations", "/images/edits"):
        return _error(404, f"the demo provider has no {method} {path}", "not_found", None)
    try:
        if path == "/images/generations":
            req = openai_images.parse_generation(body or b"")
        else:
            req = openai_images.parse_edit(body or b"", content_type or "")
    except InvalidRequest as exc:
        return _error(400, str(exc), "invalid_request", exc.param)
    if req.response_format == "url":
        return _error(400, "the demo provider returns images as b64_json only; leave out response_format or send "
                           "\"b64_json\"", "unsupported_response_format", "response_format")
    seed = hashlib.sha256(req.prompt.encode())
    for part in req.files(*openai_images.IMAGE_FIELDS):
        seed.update(hashlib.sha256(part.data).digest())
    data = [{"b64_json": base64.b64encode(png(_colours(seed.digest(), i))).decode("ascii"),
             "revised_prompt": req.prompt} for i in range(req.n)]
    payload = {"created": int(time.time()), "data": data, "output_format": "png", "size": f"{SIDE}x{SIDE}"}
    return DemoResponse(200, orjson.dumps(payload), [], 0)


def _colours(seed: bytes, index: int) -> list[tuple[int, int, int]]:
    """Two colours for image `index`: the top and the bottom half."""
    h = hashlib.sha256(seed + index.to_bytes(2, "big")).digest()
    return [(h[0], h[1], h[2]), (h[3], h[4], h[5])]


def png(colours: list[tuple[int, int, int]]) -> bytes:
    """An 8x8 RGB PNG: the first colour on the top half, the second on the bottom half."""
    rows = []
    for y in range(SIDE):
        r, g, b = colours[0] if y < SIDE // 2 else colours[-1]
        rows.append(b"\x00" + bytes((r, g, b)) * SIDE)  # filter byte 0 (none), then the pixels
    header = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _error(status: int, message: str, code: str, param: str | None) -> DemoResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return DemoResponse(status, orjson.dumps(body), [], 0)
