"""A mock image upstream on loopback speaking OpenAI's images API (under /openai/v1) and Gemini's
generateContent (under /gemini/v1beta). The upstream model name picks a behaviour; every request is recorded."""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from core.demo_images import png
from tests.loopback import LoopbackServer

ERROR_400 = {"error": {"message": "Invalid value for size.", "type": "invalid_request_error", "param": "size",
                       "code": "invalid_value"}}
ERROR_500 = {"error": {"message": "The server had an error.", "type": "server_error", "param": None, "code": None}}


def image_bytes(tag: str, index: int) -> bytes:
    """The PNG the mock returns as image `index` for a request tagged `tag`."""
    digest = orjson.dumps([tag, index])
    return png([(len(digest) % 256, index * 40 % 256, 200), (10, 20, index)])


class ImagesUpstream(LoopbackServer):
    name = "images upstream"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()  # per upstream model

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/openai/v1/images/{endpoint}", self.openai)
        app.router.add_post("/gemini/v1beta/models/{call}", self.gemini)

    def of(self, model: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["model"] == model]

    # -- OpenAI's images API -----------------------------------------------------------------

    async def openai(self, request: web.Request) -> web.Response:
        record: dict[str, Any] = {"path": request.path, "headers": dict(request.headers)}
        if request.content_type == "multipart/form-data":
            form = await request.post()  # aiohttp's own multipart reader, not the gateway's
            fields: dict[str, str] = {}
            files: list[tuple[str, str, str, bytes]] = []
            for name, value in form.items():
                if isinstance(value, web.FileField):
                    files.append((name, value.filename, value.content_type, value.file.read()))
                else:
                    fields[name] = str(value)
            record |= {"fields": fields, "files": files}
            model, n = fields.get("model", ""), int(fields.get("n", "1"))
        else:
            body = orjson.loads(await request.read())
            record["json"] = body
            model, n = body.get("model", ""), body.get("n") or 1
        record["model"] = model
        self.requests.append(record)
        self.calls[model] += 1
        if model == "img-500":
            return web.json_response(ERROR_500, status=500)
        if model == "img-400":
            return web.json_response(ERROR_400, status=400)
        count = {"img-fewer": n - 1, "img-none": 0, "img-extra": n + 2}.get(model, n)
        if model == "img-url":
            data = [{"url": f"https://images.example/{i}.png"} for i in range(count)]
        else:
            data = [{"b64_json": base64.b64encode(image_bytes(model, i)).decode(), "revised_prompt": "p"}
                    for i in range(count)]
        return web.json_response({"created": 1764000000, "model": model, "data": data,
                                  "usage": {"input_tokens": 10, "output_tokens": 100, "total_tokens": 110}})

    # -- Gemini's generateContent ---------------------------------------------------------------

    async def gemini(self, request: web.Request) -> web.Response:
        call = request.match_info["call"]
        model, _, method = call.rpartition(":")
        body = orjson.loads(await request.read())
        self.requests.append({"path": request.path, "headers": dict(request.headers), "json": body, "model": model})
        index = self.calls[model]
        self.calls[model] += 1
        if method != "generateContent":
            return web.json_response({"error": {"code": 404, "message": "no such method", "status": "NOT_FOUND"}},
                                     status=404)
        if model == "gem-500" or (model == "gem-flaky" and index % 3 == 1):
            return web.json_response({"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}},
                                     status=500)
        if model == "gem-400":
            return web.json_response({"error": {"code": 400, "message": "Unsupported aspect ratio",
                                                "status": "INVALID_ARGUMENT"}}, status=400)
        if model == "gem-blocked":
            return web.json_response({"promptFeedback": {"blockReason": "SAFETY"},
                                      "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5}})
        draft = base64.b64encode(image_bytes("draft", index)).decode()
        final = base64.b64encode(image_bytes(model, index)).decode()
        parts = [{"text": "thinking", "thought": True},
                 {"inlineData": {"mimeType": "image/png", "data": draft}, "thought": True},
                 {"text": "Here is your image."},
                 {"inlineData": {"mimeType": "image/png", "data": final}}]
        return web.json_response({
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1290, "totalTokenCount": 1295},
            "modelVersion": model,
        })
