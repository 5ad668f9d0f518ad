"""A mock OpenAI /v1/videos upstream on loopback: tasks stay queued until the test drives them to completed or
failed; it records what it was sent, and serves content in several chunks."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

from aiohttp import web

from tests.loopback import LoopbackServer

MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00\x00\x00\x10free" + b"mockmock" + b"x" * 4000
UPSTREAM_KEY = "videos-upstream-key"


class VideosUpstream(LoopbackServer):
    name = "videos upstream"

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.videos: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []  # what each create carried: fields, content type, auth
        self.deleted: list[str] = []
        self.polls: dict[str, int] = {}
        self.unanswered: set[str] = set()  # ids whose GET answers 500 (an upstream that cannot say how they stand)
        self._ids = itertools.count(1)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/videos", self.create)
        app.router.add_get("/v1/videos/{id}", self.retrieve)
        app.router.add_delete("/v1/videos/{id}", self.delete)
        app.router.add_get("/v1/videos/{id}/content", self.content)

    # -- driven by the tests ----------------------------------------------------------------------

    def by_prompt(self, prompt: str) -> str:
        with self.lock:
            return next(vid for vid, v in self.videos.items() if v.get("prompt") == prompt)

    def complete(self, vid: str, seconds: str | None = None) -> None:
        with self.lock:
            v = self.videos[vid]
            v.update(status="completed", progress=100, completed_at=int(time.time()))
            if seconds is not None:
                v["seconds"] = seconds

    def fail(self, vid: str) -> None:
        with self.lock:
            self.videos[vid].update(status="failed", error={"code": "moderation_blocked", "message": "blocked"})

    def progress(self, vid: str, percent: int) -> None:
        with self.lock:
            self.videos[vid].update(status="in_progress", progress=percent)

    # -- the API ------------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        if request.content_type == "multipart/form-data":
            form = await request.post()
            fields = {k: (v if isinstance(v, str) else {"filename": v.filename, "bytes": v.file.read()})
                      for k, v in form.items()}
        else:
            fields = await request.json()
        with self.lock:
            self.created.append({"fields": fields, "content_type": request.content_type,
                                 "auth": request.headers.get("authorization")})
        model = fields.get("model")
        if model == "video-500":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if model == "video-400":
            return web.json_response({"error": {"message": "prompt refused by moderation", "type":
                                                "invalid_request_error", "param": "prompt",
                                                "code": "moderation_blocked"}}, status=400)
        vid = f"video_up_{next(self._ids)}"
        obj = {"id": vid, "object": "video", "model": model, "status": "queued", "progress": 0,
               "created_at": int(time.time()), "completed_at": None, "expires_at": None,
               "seconds": fields.get("seconds", "4"), "size": fields.get("size", "720x1280"),
               "prompt": fields.get("prompt"), "remixed_from_video_id": None, "error": None}
        with self.lock:
            self.videos[vid] = obj
        return web.json_response(obj)

    async def retrieve(self, request: web.Request) -> web.Response:
        vid = request.match_info["id"]
        with self.lock:
            obj = self.videos.get(vid)
            self.polls[vid] = self.polls.get(vid, 0) + 1
            obj = dict(obj) if obj is not None else None
            unanswered = vid in self.unanswered
        if unanswered:
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if obj is None:
            return web.json_response({"error": {"message": "not found", "code": "not_found"}}, status=404)
        return web.json_response(obj)

    async def delete(self, request: web.Request) -> web.Response:
        vid = request.match_info["id"]
        with self.lock:
            self.deleted.append(vid)
            self.videos.pop(vid, None)
        return web.json_response({"id": vid, "object": "video.deleted", "deleted": True})

    async def content(self, request: web.Request) -> web.StreamResponse:
        vid = request.match_info["id"]
        with self.lock:
            obj = self.videos.get(vid)
        if obj is None or obj["status"] != "completed":
            return web.json_response({"error": {"message": "not ready", "code": "not_ready"}}, status=404)
        variant = request.query.get("variant", "video")
        resp = web.StreamResponse(headers={"content-type": "video/mp4" if variant == "video" else "image/webp"})
        await resp.prepare(request)
        payload = MP4 if variant == "video" else b"RIFF\x00\x00\x00\x00WEBPVP8 " + variant.encode()
        for i in range(0, len(payload), 1000):  # in pieces, with a pause between them
            await resp.write(payload[i:i + 1000])
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp
