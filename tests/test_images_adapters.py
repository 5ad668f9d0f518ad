"""Pure tests of the images adapters: request checks, the edit form read and rewritten, the price key, counting
images, the Gemini request and answer, and the demo's PNGs (the multipart reader and writer: test_multipart)."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from typing import Any

import httpx2
import orjson
import pytest

from adapters.gemini import images as gemini_images
from adapters import multipart
from adapters.internal import InvalidRequest
from adapters.openai import images
from core import demo_images

PRICES = {"1024x1024": 40_000_000, "1024x1024/hd": 80_000_000, "1792x1024/standard": 80_000_000,
          "1792x1024/hd": 120_000_000}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3  # binary content, CRLFs included


def sdk_form(fields: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]]) -> tuple[bytes, str]:
    """A multipart body built by the HTTP library the openai SDK uses."""
    req = httpx2.Request("POST", "http://gw/v1/images/edits", data=fields, files=files)
    return req.read(), req.headers["content-type"]


def gen(**fields: Any) -> bytes:
    return orjson.dumps({"model": "m", "prompt": "a red fox", **fields})


# -- generations --------------------------------------------------------------------------------


def test_generation_defaults() -> None:
    req = images.parse_generation(gen())
    assert (req.endpoint, req.model, req.prompt, req.n, req.size, req.quality) == ("generations", "m", "a red fox",
                                                                                   1, None, None)


@pytest.mark.parametrize("fields, param", [
    ({"prompt": None}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"model": ""}, "model"),
    ({"n": 0}, "n"),
    ({"n": 11}, "n"),
    ({"n": "2"}, "n"),
    ({"n": True}, "n"),
    ({"n": 2.0}, "n"),
    ({"size": 1024}, "size"),
    ({"quality": ["hd"]}, "quality"),
    ({"response_format": "gif"}, "response_format"),
    ({"stream": True}, "stream"),
])
def test_generation_refusals_name_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        images.parse_generation(gen(**fields))
    assert exc.value.param == param


def test_generation_body_must_be_a_json_object() -> None:
    for raw in (b"{", b"[1]", b""):
        with pytest.raises(InvalidRequest):
            images.parse_generation(raw)


def test_upstream_json_renames_the_model_and_writes_in_what_is_billed() -> None:
    req = images.parse_generation(gen(n=2, style="vivid"))
    choice = images.choose_price(PRICES, None, None)
    out = orjson.loads(images.upstream_json(req, "dall-e-3", choice))
    assert out == {"model": "dall-e-3", "prompt": "a red fox", "n": 2, "style": "vivid", "size": "1024x1024"}
    choice = images.choose_price(PRICES, "1792x1024", None)
    out = orjson.loads(images.upstream_json(images.parse_generation(gen(size="1792x1024")), "d", choice))
    assert (out["size"], out["quality"]) == ("1792x1024", "standard")


# -- the price key -------------------------------------------------------------------------------


@pytest.mark.parametrize("size, quality, key", [
    (None, None, "1024x1024"),  # the first configured size
    ("1024x1024", None, "1024x1024"),
    ("1024x1024", "hd", "1024x1024/hd"),
    ("1792x1024", "hd", "1792x1024/hd"),
    ("1792x1024", None, "1792x1024/standard"),  # the first quality configured for the size
])
def test_price_key(size: str | None, quality: str | None, key: str) -> None:
    choice = images.choose_price(PRICES, size, quality)
    assert (choice.key, choice.price) == (key, PRICES[key])


@pytest.mark.parametrize("size, quality, param", [
    ("512x512", None, "size"),
    ("auto", None, "size"),
    ("1792x1024", "low", "quality"),
    ("1024x1024", "standard", "quality"),  # the size has per-quality prices: an unpriced quality is not billed at SIZE
])
def test_unpriced_size_or_quality_is_refused(size: str, quality: str | None, param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        images.choose_price(PRICES, size, quality)
    assert exc.value.param == param
    assert "1024x1024" in str(exc.value) or "standard" in str(exc.value)


def test_the_quality_sent_upstream_is_exactly_the_one_billed() -> None:
    # the size has per-quality prices: a quality without its own is refused, naming the priced ones
    with pytest.raises(InvalidRequest) as exc:
        images.choose_price(PRICES, "1024x1024", "high")
    assert exc.value.param == "quality" and "hd" in str(exc.value)
    # omitted: the SIZE price, which bills the upstream's default quality, so no quality goes upstream
    choice = images.choose_price(PRICES, "1024x1024", None)
    assert (choice.key, choice.quality) == ("1024x1024", None)
    out = orjson.loads(images.upstream_json(images.parse_generation(gen(size="1024x1024")), "d", choice))
    assert "quality" not in out
    # a plain SIZE price only: any quality may be asked, billed at SIZE, and none is sent upstream
    plain = {"1024x1024": 40}
    choice = images.choose_price(plain, "1024x1024", "hd")
    assert (choice.key, choice.price, choice.quality) == ("1024x1024", 40, None)
    out = orjson.loads(images.upstream_json(images.parse_generation(gen(quality="hd")), "d", choice))
    assert "quality" not in out and out["size"] == "1024x1024"
    raw, ctype = sdk_form({"prompt": "fox", "model": "m", "quality": "hd"}, [("image", ("x.png", PNG, "image/png"))])
    req = images.parse_edit(raw, ctype)
    body, out_type = images.upstream_form(req, "u", images.choose_price(plain, req.size, req.quality), "tt-b")
    assert "quality" not in {p.name for p in multipart.parse_multipart(body, out_type)}
    # a priced quality asked: sent as asked, once
    raw, ctype = sdk_form({"prompt": "fox", "model": "m", "quality": "hd"}, [("image", ("x.png", PNG, "image/png"))])
    req = images.parse_edit(raw, ctype)
    body, out_type = images.upstream_form(req, "u", images.choose_price(PRICES, req.size, req.quality), "tt-b")
    assert [p.data for p in multipart.parse_multipart(body, out_type) if p.name == "quality"] == [b"hd"]


def test_first_configured_key_with_a_quality_is_the_default() -> None:
    choice = images.choose_price({"1024x1024/medium": 5, "1024x1024/high": 9}, None, None)
    assert (choice.size, choice.quality, choice.price) == ("1024x1024", "medium", 5)


# -- the edit form ----------------------------------------------------------------------------------


def test_sdk_form_is_read_exactly() -> None:
    raw, ctype = sdk_form({"prompt": 'a "quoted" fox', "model": "m", "n": "3", "size": "1024x1024"},
                          [("image[]", ('a "b".png', PNG, "image/png")), ("image[]", ("c.webp", b"RIFF", "image/webp")),
                           ("mask", ("mask.png", b"\x89PNGmask", "image/png"))])
    req = images.parse_edit(raw, ctype)
    assert (req.model, req.prompt, req.n, req.size) == ("m", 'a "quoted" fox', 3, "1024x1024")
    files = req.files(*images.IMAGE_FIELDS)
    assert [(f.filename, f.content_type, f.data) for f in files] == [
        ('a %22b%22.png', "image/png", PNG), ("c.webp", "image/webp", b"RIFF")]  # names as sent (HTML5 escapes)
    assert req.files("mask")[0].data == b"\x89PNGmask"


def test_form_round_trip_keeps_every_part_and_renames_the_model() -> None:
    raw, ctype = sdk_form({"prompt": "fox", "model": "public", "user": "u1"}, [("image", ("x.png", PNG, "image/png"))])
    req = images.parse_edit(raw, ctype)
    choice = images.choose_price(PRICES, req.size, req.quality)
    body, out_type = images.upstream_form(req, "gpt-image-1", choice, "tt-boundary")
    assert out_type == "multipart/form-data; boundary=tt-boundary"
    again = multipart.parse_multipart(body, out_type)
    by_name = {p.name: p for p in again}
    assert by_name["model"].data == b"gpt-image-1"
    assert by_name["image"].data == PNG and by_name["image"].filename == "x.png"
    assert by_name["image"].raw_headers == next(p for p in req.parts if p.name == "image").raw_headers
    assert (by_name["user"].data, by_name["prompt"].data, by_name["size"].data) == (b"u1", b"fox", b"1024x1024")
    assert "quality" not in by_name  # the size's own price covers every quality: none is written in
    clash = images.parse_edit(*sdk_form({"prompt": "fox", "model": "m"},
                                        [("image", ("x.png", PNG + b"--tt-clash", "image/png"))]))
    with pytest.raises(ValueError):  # a boundary found inside a file is never used (the caller draws another)
        images.upstream_form(clash, "gpt-image-1", choice, "tt-clash")


def test_edit_refusals() -> None:
    raw, ctype = sdk_form({"prompt": "fox", "model": "m"}, [("mask", ("m.png", PNG, "image/png"))])
    with pytest.raises(InvalidRequest) as exc:
        images.parse_edit(raw, ctype)
    assert exc.value.param == "image"
    raw, ctype = sdk_form({"prompt": "fox", "model": "m", "n": "two"}, [("image", ("x.png", PNG, "image/png"))])
    with pytest.raises(InvalidRequest) as exc:
        images.parse_edit(raw, ctype)
    assert exc.value.param == "n"
    raw, ctype = sdk_form({"model": "m"}, [("image", ("x.png", PNG, "image/png"))])
    with pytest.raises(InvalidRequest) as exc:
        images.parse_edit(raw, ctype)
    assert exc.value.param == "prompt"


def test_an_edit_must_be_a_form() -> None:
    with pytest.raises(InvalidRequest, match="multipart/form-data"):
        images.parse_edit(b'{"prompt": "x"}', "application/json")


# -- counting ---------------------------------------------------------------------------------------


def test_count_images() -> None:
    assert images.count_images({"data": [{"b64_json": "QQ=="}, {"url": "https://x/1.png"}, {"b64_json": ""},
                                         {"revised_prompt": "x"}, "junk"]}) == 2
    for obj in ({}, {"data": None}, [], None, {"data": {"b64_json": "x"}}):
        assert images.count_images(obj) == 0


# -- Gemini ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, config", [
    ("1024x1024", {"aspectRatio": "1:1"}),
    ("1536x1024", {"aspectRatio": "3:2"}),
    ("1024x1536", {"aspectRatio": "2:3"}),
    ("1792x1024", {"aspectRatio": "16:9"}),  # 7:4 is not offered: the nearest ratio
    ("2048x2048", {"aspectRatio": "1:1", "imageSize": "2K"}),
    ("4096x2304", {"aspectRatio": "16:9", "imageSize": "4K"}),
])
def test_gemini_request(size: str, config: dict[str, str]) -> None:
    body = orjson.loads(gemini_images.build_request("a red fox", [], size))
    assert body == {"contents": [{"role": "user", "parts": [{"text": "a red fox"}]}],
                    "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": config}}
    assert "candidateCount" not in body["generationConfig"]


def test_gemini_edit_request_and_auto_size() -> None:
    body = orjson.loads(gemini_images.build_request("make it blue", [("image/png", PNG)], "auto"))
    assert body["contents"][0]["parts"] == [
        {"text": "make it blue"}, {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(PNG).decode()}}]
    assert body["generationConfig"] == {"responseModalities": ["IMAGE"]}
    assert gemini_images.path("gemini-2.5-flash-image") == "/models/gemini-2.5-flash-image:generateContent"


def test_gemini_answer_to_openai_entries() -> None:
    answer = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "drafting", "thought": True},
        {"inlineData": {"mimeType": "image/png", "data": "ZHJhZnQ="}, "thought": True},
        {"text": "Here it is"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBO-_w=="}},
        {"inline_data": {"mime_type": "image/jpeg", "data": "/9j/"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklG"}},
    ]}, "finishReason": "STOP"}]}
    got = gemini_images.parse_response(answer)
    assert got.images == [{"b64_json": "iVBO+/w=="}, {"b64_json": "/9j/"}]
    assert got.mime_types == ["image/png", "image/jpeg"] and not got.blocked
    assert gemini_images.output_format(got.mime_types) is None
    assert gemini_images.output_format(["image/png"]) == "png"


@pytest.mark.parametrize("answer, blocked", [
    ({"promptFeedback": {"blockReason": "SAFETY"}}, "SAFETY"),
    ({"candidates": [{"finishReason": "IMAGE_SAFETY"}]}, "IMAGE_SAFETY"),
    ({"candidates": [{"content": {"parts": [{"text": "no"}]}, "finishReason": "STOP"}]}, ""),
    ({"candidates": [{"content": {}}]}, ""),
    ([], ""),
])
def test_gemini_answer_without_images(answer: Any, blocked: str) -> None:
    got = gemini_images.parse_response(answer)
    assert (got.images, got.blocked) == ([], blocked)


def test_input_mime() -> None:
    assert gemini_images.input_mime("application/octet-stream", PNG) == "image/png"
    assert gemini_images.input_mime(None, b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert gemini_images.input_mime(None, b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert gemini_images.input_mime("image/heic", b"\x00\x00\x00\x18ftypheic") == "image/heic"
    with pytest.raises(InvalidRequest) as exc:
        gemini_images.input_mime("image/png", b"GIF89a")
    assert exc.value.param == "image"


# -- the demo --------------------------------------------------------------------------------------------


def _pixels(data: bytes) -> tuple[int, int, bytes]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    return width, height, zlib.decompress(chunks[b"IDAT"])


def test_demo_pngs_are_valid_and_deterministic() -> None:
    def run(body: dict[str, Any]) -> Any:
        resp = asyncio.run(demo_images.answer("POST", "/images/generations", orjson.dumps(body), "application/json"))
        return resp.status, orjson.loads(asyncio.run(resp.read()))

    status, out = run({"model": "image", "prompt": "a red fox", "n": 3})
    assert status == 200 and len(out["data"]) == 3 and isinstance(out["created"], int)
    pngs = [base64.b64decode(d["b64_json"]) for d in out["data"]]
    width, height, raw = _pixels(pngs[0])
    assert (width, height, len(raw)) == (8, 8, 8 * (1 + 8 * 3))
    assert len(set(pngs)) == 3
    assert [base64.b64decode(d["b64_json"]) for d in run({"model": "image", "prompt": "a red fox", "n": 3})[1]["data"]] == pngs
    assert run({"model": "image", "prompt": "a blue fox"})[1]["data"][0]["b64_json"] != out["data"][0]["b64_json"]
    status, out = run({"model": "image", "prompt": "x", "response_format": "url"})
    assert status == 400 and out["error"]["param"] == "response_format"


def test_demo_edit() -> None:
    raw, ctype = sdk_form({"prompt": "blue", "model": "image", "n": "2"}, [("image", ("x.png", PNG, "image/png"))])
    resp = asyncio.run(demo_images.answer("POST", "/images/edits", raw, ctype))
    assert resp.status == 200
    assert len(orjson.loads(asyncio.run(resp.read()))["data"]) == 2
    resp = asyncio.run(demo_images.answer("POST", "/images/edits", b"{}", "application/json"))
    assert resp.status == 400
