"""OpenAI image requests for a Gemini image model: the generateContent request (responseModalities IMAGE, the
size as an aspect ratio, edits' images inline) and its answer read back as OpenAI `data` entries. Pure."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from fractions import Fraction
from math import log
from typing import Any

import orjson

from adapters.gemini.common import _f, _list, _model_path, _str
from adapters.internal import InvalidRequest

# imageConfig.aspectRatio values Gemini accepts (google-genai types.ImageConfig)
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "21:9")
INPUT_TYPES = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")
OUTPUT_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
BLOCKED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
           "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION")


@dataclass(slots=True)
class GeminiImages:
    """What one generateContent answer holds: its images as OpenAI `data` entries (b64_json), their mime
    types, and why there is none when it was blocked."""

    images: list[dict[str, Any]] = field(default_factory=list)
    mime_types: list[str] = field(default_factory=list)
    blocked: str = ""  # promptFeedback.blockReason or a safety finishReason


def path(upstream_model: str) -> str:
    return f"/{_model_path(upstream_model)}:generateContent"


def build_request(prompt: str, images: list[tuple[str, bytes]], size: str) -> bytes:
    """One generateContent request that asks for one image: the prompt, then any images to edit (inline),
    and the size as imageConfig (aspectRatio; imageSize 2K/4K past 1792/3200 pixels, else Gemini's default 1K).
    candidateCount is left out: Gemini's image models refuse more than one candidate."""
    parts: list[dict[str, Any]] = [{"text": prompt}]
    for mime, data in images:
        parts.append({"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode("ascii")}})
    config: dict[str, Any] = {"responseModalities": ["IMAGE"]}
    image_config = _image_config(size)
    if image_config:
        config["imageConfig"] = image_config
    return orjson.dumps({"contents": [{"role": "user", "parts": parts}], "generationConfig": config})


def _image_config(size: str) -> dict[str, str]:
    """OpenAI's WIDTHxHEIGHT as Gemini's nearest aspect ratio and size class; "auto" leaves both to Gemini."""
    dims = size.split("x")
    if len(dims) != 2 or not all(d.isdigit() and int(d) > 0 for d in dims):
        return {}
    width, height = int(dims[0]), int(dims[1])
    want = log(width / height)
    ratio = min(ASPECT_RATIOS, key=lambda r: abs(log(float(Fraction(*map(int, r.split(":"))))) - want))
    out = {"aspectRatio": ratio}
    longest = max(width, height)  # Gemini's 1K images are at most 1536 wide, its 2K ones 3168
    if longest > 3200:
        out["imageSize"] = "4K"
    elif longest > 1792:  # OpenAI's largest sizes (1792x1024) are 1K class
        out["imageSize"] = "2K"
    return out


def input_mime(declared: str | None, data: bytes) -> str:
    """The type of an uploaded image, from its bytes (PNG, JPEG, WEBP) or, for HEIC/HEIF, its declared
    type; anything else is a 400, since Gemini would refuse it."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    kind = (declared or "").partition(";")[0].strip().lower()
    if kind in ("image/heic", "image/heif"):
        return kind
    raise InvalidRequest("an 'image' file is not a PNG, JPEG, WEBP, HEIC or HEIF image, which is all a Gemini "
                         "model can edit", "image")


def parse_response(obj: Any) -> GeminiImages:
    """The image parts of a generateContent answer (thought images, which are drafts, are skipped), and
    the block reason when a prompt or a candidate was stopped."""
    out = GeminiImages()
    if not isinstance(obj, dict):
        return out
    out.blocked = _str(_f(_f(obj, "promptFeedback"), "blockReason"))
    for candidate in _list(_f(obj, "candidates")):
        reason = _str(_f(candidate, "finishReason"))
        for part in _list(_f(_f(candidate, "content"), "parts")):
            if not isinstance(part, dict) or part.get("thought") is True:
                continue
            inline = _f(part, "inlineData")
            mime = _str(_f(inline, "mimeType"))
            data = _str(_f(inline, "data"))
            if mime.startswith("image/") and data:
                out.images.append({"b64_json": _standard_b64(data)})
                out.mime_types.append(mime)
        if not out.images and reason in BLOCKED:
            out.blocked = out.blocked or reason
    return out


def _standard_b64(data: str) -> str:
    """Gemini may answer in the URL-safe alphabet; OpenAI clients decode the standard one."""
    return data.replace("-", "+").replace("_", "/") if ("-" in data or "_" in data) else data


def output_format(mime_types: list[str]) -> str | None:
    """OpenAI's `output_format` when every image has the same type."""
    kinds = {OUTPUT_FORMATS.get(m) for m in mime_types}
    return kinds.pop() if len(kinds) == 1 else None
