"""The demo provider's /videos (OpenAI's shape): a video "renders" in RENDER_SECONDS by the clock and then has
a tiny MP4-shaped payload. Stateless: the upstream id carries what the task needs, so it survives restarts."""

from __future__ import annotations

import re
import struct
import time
import zlib
from typing import Any

import orjson

from adapters.internal import InvalidRequest
from adapters.openai import videos
from core.demo_response import DemoResponse

RENDER_SECONDS = 2.0  # from submission to completed
ASSET_SECONDS = 24 * 3600  # how long the demo says its assets can be downloaded
FAIL_WORD = "[fail]"  # a prompt containing it fails instead of completing (to try the release path)
_ID = re.compile(r"video_demo_([0-9a-f]+)_(\d+)_(\d+x\d+)_([cf])")


def _mp4(seconds: int) -> list[bytes]:
    """A tiny file that starts like an MP4 (an ftyp box, then a free box), in three chunks."""
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 0x200) + b"isomiso2"
    filler = (b"TokenToll demo video, %d seconds. " % seconds) * 8
    free = struct.pack(">I", 8 + len(filler)) + b"free" + filler
    return [ftyp, free[: len(free) // 2], free[len(free) // 2:]]


def _png() -> bytes:
    """A 1x1 grey PNG (the thumbnail and the spritesheet)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + \
        chunk(b"IEND", b"")


def _error(status: int, message: str, code: str) -> DemoResponse:
    return DemoResponse(status, orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                                        "param": None, "code": code}}), [], 0)


def _object(vid: str, model: str, now: float) -> dict[str, Any] | None:
    m = _ID.fullmatch(vid)
    if m is None:
        return None
    created = int(m.group(1), 16) / 1000
    elapsed = max(now - created, 0.0)
    done = elapsed >= RENDER_SECONDS
    status = ("failed" if m.group(4) == "f" else "completed") if done else "queued" if elapsed < 0.2 else "in_progress"
    return {
        "id": vid, "object": "video", "model": model, "status": status,
        "progress": 100 if done else min(int(elapsed / RENDER_SECONDS * 100), 99),
        "created_at": int(created), "completed_at": int(created + RENDER_SECONDS) if status == "completed" else None,
        "expires_at": int(created + ASSET_SECONDS) if status == "completed" else None,
        "seconds": m.group(2), "size": m.group(3), "prompt": None, "remixed_from_video_id": None,
        "error": {"code": "demo_failure", "message": f"the prompt asked the demo to fail ({FAIL_WORD})"}
        if status == "failed" else None,
    }


async def answer(provider: Any, method: str, path: str, body: bytes | None, content_type: str | None) -> DemoResponse:
    now = time.time()
    route, _, query = path.partition("?")
    parts = route.strip("/").split("/")  # ["videos", id?, "content"?]
    if method == "POST" and parts == ["videos"]:
        try:
            req = videos.parse_create(body or b"", content_type or "application/json")
        except InvalidRequest as exc:
            return _error(400, str(exc), "invalid_request")
        flag = "f" if videos_fail(req.prompt) else "c"
        vid = f"video_demo_{int(now * 1000):x}_{req.seconds}_{req.size or '720x1280'}_{flag}"
        obj = _object(vid, req.model, now)
        assert obj is not None
        obj["prompt"] = req.prompt
        return DemoResponse(200, orjson.dumps(obj), [], 0)
    if len(parts) < 2 or parts[0] != "videos":
        return _error(404, f"the demo provider has no {method} {route}", "not_found")
    obj = _object(parts[1], "sora-2", now)
    if obj is None:
        return _error(404, f"no video {parts[1]!r}", "not_found")
    if len(parts) == 2 and method == "GET":
        return DemoResponse(200, orjson.dumps(obj), [], 0)
    if len(parts) == 2 and method == "DELETE":
        return DemoResponse(200, videos.deleted(parts[1]), [], 0)
    if len(parts) == 3 and parts[2] == "content" and method == "GET":
        if obj["status"] != "completed":
            return _error(404, "the video is not ready", "video_not_ready")
        if "variant=thumbnail" in query or "variant=spritesheet" in query:
            resp = DemoResponse(200, b"", [_png()], 0)
            resp.headers["content-type"] = "image/png"
        else:
            resp = DemoResponse(200, b"", _mp4(int(obj["seconds"])), 0)
            resp.headers["content-type"] = "video/mp4"
        return resp
    return _error(404, f"the demo provider has no {method} {route}", "not_found")


def videos_fail(prompt: str) -> bool:
    return FAIL_WORD in prompt
