"""The OpenAI images API (POST /v1/images/generations and /v1/images/edits): the JSON and multipart request
checked field by field, the price key chosen, the upstream body rebuilt, and the images in an answer counted. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from adapters.internal import InvalidRequest
from adapters.multipart import (FORM_DATA, Part, encode_multipart, form_content_type, media_type, parse_multipart,
                                text_fields)

MAX_IMAGES = 10  # OpenAI's own limit on n
RESPONSE_FORMATS = ("b64_json", "url")
IMAGE_FIELDS = ("image", "image[]")  # the openai SDK sends a list of images as image[]
FILE_FIELDS = (*IMAGE_FIELDS, "mask", "markup")


@dataclass(slots=True)
class ImageRequest:
    """A checked images request. `body` is the JSON object (generations); `parts` the form (edits)."""

    endpoint: str  # "generations" | "edits"
    model: str
    prompt: str
    n: int = 1
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)

    def files(self, *names: str) -> list[Part]:
        return [p for p in self.parts if p.name in names]


@dataclass(frozen=True, slots=True)
class PriceChoice:
    """The price key that bills the request, and the size and quality it stands for: exactly what is written
    upstream (quality None: a plain SIZE price, which bills the upstream's default quality, so none is sent)."""

    key: str
    size: str
    quality: str | None
    price: int  # nano-USD per image


# -- requests -----------------------------------------------------------------------------------


def parse_generation(raw: bytes) -> ImageRequest:
    """A JSON generations request, every field the gateway reads checked (400 naming the field)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    stream = body.get("stream")
    if stream not in (None, False):
        raise InvalidRequest("streaming image generation (stream: true) is not supported by this gateway", "stream")
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool)):
        raise InvalidRequest("'n' must be an integer from 1 to 10", "n")
    return _checked("generations", body.get("model"), body.get("prompt"), 1 if n is None else n, body.get("size"),
                    body.get("quality"), body.get("response_format"), body=body)


def parse_edit(raw: bytes, content_type: str) -> ImageRequest:
    """A multipart/form-data edits request, as the openai SDK sends it: image (or image[]) files, an optional
    mask, and text fields."""
    if media_type(content_type) != FORM_DATA:
        raise InvalidRequest("image edits must be sent as multipart/form-data (as the openai SDK does)")
    parts = parse_multipart(raw, content_type)
    fields = text_fields(parts, {p.name for p in parts if p.name not in FILE_FIELDS})
    images = [p for p in parts if p.name in IMAGE_FIELDS]
    if not images:
        raise InvalidRequest("'image' is required: send the image to edit as a file field", "image")
    if any(not p.data for p in images):
        raise InvalidRequest("an 'image' file is empty", "image")
    masks = [p for p in parts if p.name == "mask"]
    if len(masks) > 1 or any(not p.data for p in masks):
        raise InvalidRequest("'mask' must be one non-empty file", "mask")
    if fields.get("stream", "false").lower() not in ("false", ""):
        raise InvalidRequest("streaming image edits (stream: true) are not supported by this gateway", "stream")
    n_text = fields.get("n")
    if n_text is None or n_text == "":
        n: Any = 1
    elif re.fullmatch(r"\d{1,3}", n_text):
        n = int(n_text)
    else:
        raise InvalidRequest("'n' must be an integer from 1 to 10", "n")
    return _checked("edits", fields.get("model"), fields.get("prompt"), n, fields.get("size") or None,
                    fields.get("quality") or None, fields.get("response_format") or None, parts=parts)


def _checked(endpoint: str, model: Any, prompt: Any, n: Any, size: Any, quality: Any, response_format: Any,
             body: dict[str, Any] | None = None, parts: list[Part] | None = None) -> ImageRequest:
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", "model")
    if not isinstance(prompt, str):
        raise InvalidRequest("'prompt' is required and must be a string", "prompt")
    if not prompt.strip():
        raise InvalidRequest("'prompt' must not be empty", "prompt")
    if not 1 <= n <= MAX_IMAGES:
        raise InvalidRequest(f"'n' must be an integer from 1 to {MAX_IMAGES}, got {n}", "n")
    if size is not None and not isinstance(size, str):
        raise InvalidRequest("'size' must be a string like \"1024x1024\"", "size")
    if quality is not None and not isinstance(quality, str):
        raise InvalidRequest("'quality' must be a string like \"standard\", \"hd\" or \"high\"", "quality")
    if response_format is not None and response_format not in RESPONSE_FORMATS:
        raise InvalidRequest("'response_format' must be \"b64_json\" or \"url\"", "response_format")
    return ImageRequest(endpoint, model, prompt, n, size, quality, response_format, body or {}, parts or [])


def choose_price(prices: dict[str, int], size: str | None, quality: str | None) -> PriceChoice:
    """The price key for a size and quality. SIZE/QUALITY bills that quality; a plain SIZE price bills the
    upstream's default quality (no quality is sent upstream, whatever quality the client named). When the size
    has SIZE/QUALITY prices, a quality without a price of its own is a 400 naming the priced ones. An omitted
    size is the model's first configured size; an omitted quality takes the SIZE price, else the first
    SIZE/QUALITY configured for that size. Anything unpriced is a 400."""
    if not prices:
        raise InvalidRequest("this model has no image prices", "model")
    if size is None:
        size = next(iter(prices)).partition("/")[0]
    sizes = list(dict.fromkeys(k.partition("/")[0] for k in prices))
    if size not in sizes:
        raise InvalidRequest(f"'size' {size!r} is not offered for this model; sizes: {', '.join(sizes)}", "size")
    qualities = [k.partition("/")[2] for k in prices if k.startswith(size + "/")]
    if quality is not None and qualities:
        key = f"{size}/{quality}"
        if key in prices:
            return PriceChoice(key, size, quality, prices[key])
        default = " (or leave 'quality' out for the default quality)" if size in prices else ""
        raise InvalidRequest(f"'quality' {quality!r} has no price at size {size} for this model; priced qualities: "
                             f"{', '.join(qualities)}{default}", "quality")
    if size in prices:
        return PriceChoice(size, size, None, prices[size])
    key = f"{size}/{qualities[0]}"
    return PriceChoice(key, size, qualities[0], prices[key])


# -- the upstream's request (same format: passed through) ---------------------------------------


def upstream_json(req: ImageRequest, upstream_model: str, choice: PriceChoice) -> bytes:
    """The client's JSON with the upstream model name, the billed size, and exactly the billed quality (none
    for a plain SIZE price), so the image made is the image paid for."""
    body = {**req.body, "model": upstream_model, "size": choice.size}
    body.pop("quality", None)
    if choice.quality is not None:
        body["quality"] = choice.quality
    return orjson.dumps(body)


def upstream_form(req: ImageRequest, upstream_model: str, choice: PriceChoice, boundary: str) -> tuple[bytes, str]:
    """The client's form, every part as it came (headers and bytes), but the model field carrying the
    upstream name; the billed size appended when omitted, and the quality exactly the billed one (none for a
    plain SIZE price; the client's part kept when it is the billed one). Returns the body and its Content-Type."""
    billed = choice.quality.encode() if choice.quality is not None else None
    parts, quality_sent = [], False
    for p in req.parts:
        if p.name == "model":
            p = Part(p.name, None, None, upstream_model.encode(), p.raw_headers)
        elif p.name == "size" and not p.data:
            continue  # an empty field is an omitted one: its billed value is appended below
        elif p.name == "quality":
            if quality_sent or p.data != billed:
                continue  # not what is billed: the billed quality (if any) is appended below
            quality_sent = True
        parts.append(p)
    if req.size is None:
        parts.append(Part("size", None, None, choice.size.encode()))
    if billed is not None and not quality_sent:
        parts.append(Part("quality", None, None, billed))
    return encode_multipart(parts, boundary), form_content_type(boundary)


# -- answers ------------------------------------------------------------------------------------


def count_images(obj: Any) -> int:
    """Images an answer carries: the `data` entries with a b64_json or url."""
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        return 0
    return sum(1 for d in data if isinstance(d, dict) and (_nonempty(d.get("b64_json")) or _nonempty(d.get("url"))))


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def images_response(images: list[dict[str, Any]], created: int, output_format: str | None = None) -> bytes:
    out: dict[str, Any] = {"created": created, "data": images}
    if output_format:
        out["output_format"] = output_format
    return orjson.dumps(out)
