"""OpenAI's /v1/videos wire format, pure: the routes, create requests (JSON or multipart) validated and
rewritten for the upstream, video objects renamed to the gateway's ids and names, and status mapping."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

import orjson

from adapters.internal import InvalidRequest
from adapters.multipart import (FORM_DATA, Part, boundary, encode_multipart, form_content_type, media_type,
                                parse_multipart, text_fields)

SECONDS = ("4", "8", "12")  # the SDK's VideoSeconds
DEFAULT_SECONDS = "4"
DEFAULT_MODEL = "sora-2"  # OpenAI's default when a request names none
VARIANTS = ("video", "thumbnail", "spritesheet")
ID_PREFIX = "video_tt_"
MAX_PROMPT_CHARS = 32_000
LIST_DEFAULT, LIST_MAX = 20, 100
_SIZE = re.compile(r"[1-9]\d{1,4}x[1-9]\d{1,4}")
_UPSTREAM_STATUS = {"queued": "queued", "pending": "queued", "in_progress": "in_progress",
                    "processing": "in_progress", "running": "in_progress", "completed": "completed",
                    "succeeded": "completed", "failed": "failed", "error": "failed", "cancelled": "failed",
                    "canceled": "failed", "expired": "failed"}

Action = Literal["create", "list", "retrieve", "delete", "content", "cancel"]


# -- routes -----------------------------------------------------------------------------------------


def route(method: str, path: str) -> tuple[Action, str] | tuple[None, str]:
    """(action, video id) for a path under /v1/videos; (None, reason) for a path or method not served:
    the reason is "unknown" (404) or the allowed methods (405)."""
    rest = path[len("/v1/videos"):].strip("/")
    parts = rest.split("/") if rest else []
    table: dict[str, Action]
    if not parts:
        table, vid = {"POST": "create", "GET": "list"}, ""
    elif len(parts) == 1 and parts[0] not in ("edits", "extensions", "characters"):
        table, vid = {"GET": "retrieve", "DELETE": "delete"}, parts[0]
    elif len(parts) == 2 and parts[1] in ("content", "cancel"):
        table, vid = ({"GET": "content"} if parts[1] == "content" else {"POST": "cancel"}), parts[0]
    else:
        return None, "unknown"
    action = table.get(method)
    if action is None:
        return None, ", ".join(table)
    return action, vid


def task_id(request_id: str) -> str:
    """The id a client sees for the task its request created: derived from the hold's request id, so the
    books find a hold's task (and a task's hold) by primary key."""
    return ID_PREFIX + request_id.removeprefix("req_")


def hold_request_id(video_id: str) -> str:
    return "req_" + video_id.removeprefix(ID_PREFIX)


# -- create -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class VideoCreate:
    model: str
    prompt: str
    seconds: int
    size: str | None
    multipart: bool
    body: dict[str, Any] = field(default_factory=dict)  # the JSON body
    parts: list[Part] = field(default_factory=list)  # the multipart body
    boundary: str = ""  # the client's, reused for the upstream


def parse_create(body: bytes, content_type: str) -> VideoCreate:
    """A create request in JSON or multipart/form-data (the SDK's form), validated. InvalidRequest on
    anything a client must fix."""
    mime = media_type(content_type)
    if mime == FORM_DATA:
        return _create_from_parts(parse_multipart(body, content_type), boundary(content_type))
    if mime not in ("application/json", ""):
        raise InvalidRequest(f"unsupported Content-Type {mime!r}: send application/json or multipart/form-data", None)
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", None) from None
    if not isinstance(obj, dict):
        raise InvalidRequest("the request body must be a JSON object", None)
    seconds = obj.get("seconds", DEFAULT_SECONDS)
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        seconds = str(seconds)
    ref = obj.get("input_reference")
    if ref is not None and (not isinstance(ref, dict) or not ref or any(
            k not in ("file_id", "image_url") or not isinstance(v, str) or not v for k, v in ref.items())):
        raise InvalidRequest("'input_reference' must be an object with a 'file_id' or an 'image_url' string "
                             "(or a file, sent as multipart/form-data)", "input_reference")
    model, prompt, secs, size = _fields(obj.get("model", DEFAULT_MODEL), obj.get("prompt"), seconds, obj.get("size"))
    return VideoCreate(model, prompt, secs, size, False, body={**obj, "seconds": str(secs)})


def _create_from_parts(parts: list[Part], bound: str) -> VideoCreate:
    texts = text_fields(parts, ("model", "prompt", "seconds", "size"))
    model, prompt, secs, size = _fields(texts.get("model", DEFAULT_MODEL), texts.get("prompt"),
                                        texts.get("seconds", DEFAULT_SECONDS), texts.get("size"))
    return VideoCreate(model, prompt, secs, size, True, parts=parts, boundary=bound)


def _fields(model: Any, prompt: Any, seconds: Any, size: Any) -> tuple[str, str, int, str | None]:
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", "model")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest("'prompt' is required and must be a non-empty string", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"'prompt' is longer than {MAX_PROMPT_CHARS} characters", "prompt")
    if seconds not in SECONDS:
        raise InvalidRequest(f"'seconds' must be one of {', '.join(SECONDS)} (a string), got {seconds!r}", "seconds")
    if size is not None and (not isinstance(size, str) or not _SIZE.fullmatch(size)):
        raise InvalidRequest(f"'size' must be WIDTHxHEIGHT, for example 720x1280; got {size!r}", "size")
    return model, prompt, int(seconds), size


def upstream_request(req: VideoCreate, upstream_model: str) -> tuple[bytes, str]:
    """The create request for the upstream, with its model name: the client's own form and fields."""
    if not req.multipart:
        return orjson.dumps({**req.body, "model": upstream_model}), "application/json"
    parts = [p for p in req.parts if p.name != "model"] + [Part("model", None, None, upstream_model.encode())]
    return encode_multipart(parts, req.boundary), form_content_type(req.boundary)


# -- objects ----------------------------------------------------------------------------------------


def task_status(obj: dict[str, Any]) -> str:
    """The task's state from an upstream object: queued, in_progress, completed or failed (an upstream's own
    cancellation or expiry is a failure). An unknown status is taken as still in progress."""
    status = obj.get("status")
    return _UPSTREAM_STATUS.get(status, "in_progress") if isinstance(status, str) else "in_progress"


def client_object(upstream: dict[str, Any], video_id: str, public_model: str) -> dict[str, Any]:
    """The upstream's object as the client sees it: the gateway's id and the public model name, never the
    upstream's, and a status the SDK knows."""
    obj = {**upstream, "id": video_id, "model": public_model, "object": "video"}
    if obj.get("remixed_from_video_id") is not None:
        obj["remixed_from_video_id"] = None  # an upstream id; the gateway creates no remixes
    status = task_status(upstream)
    obj["status"] = status
    if status == "failed" and not isinstance(obj.get("error"), dict):
        obj["error"] = {"code": "video_generation_failed", "message": "the upstream provider failed the video"}
    return obj


ENDINGS = {
    "cancelled": ("video_cancelled", "the video was cancelled by its owner; nothing was charged"),
    "expired": ("video_expired", "the video was not completed in time and expired; nothing was charged"),
}


def rendered(obj: dict[str, Any], status: str) -> dict[str, Any]:
    """The stored object under the task's own status: cancelled and expired tasks show as `failed` (the
    SDK's statuses are queued, in_progress, completed and failed) with an error code that says which."""
    if status not in ENDINGS:
        return obj
    code, message = ENDINGS[status]
    return {**obj, "status": "failed", "completed_at": None, "error": {"code": code, "message": message}}


def deleted(video_id: str) -> bytes:
    return orjson.dumps({"id": video_id, "object": "video.deleted", "deleted": True})


# -- list and download queries ----------------------------------------------------------------------


def list_query(query_string: bytes) -> tuple[str | None, int, str]:
    """after, limit (1..100, default 20) and order (asc or desc, default desc)."""
    q = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    after = q.get("after", [None])[-1] or None
    raw_limit = q.get("limit", [str(LIST_DEFAULT)])[-1]
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= LIST_MAX:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {LIST_MAX}", "limit")
    order = q.get("order", ["desc"])[-1]
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be asc or desc", "order")
    return after, int(raw_limit), order


def variant_query(query_string: bytes) -> str:
    q = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    variant = q.get("variant", ["video"])[-1]
    if variant not in VARIANTS:
        raise InvalidRequest(f"'variant' must be one of {', '.join(VARIANTS)}", "variant")
    return variant


def list_page(objects: list[dict[str, Any]], has_more: bool) -> bytes:
    return orjson.dumps({"object": "list", "data": objects, "first_id": objects[0]["id"] if objects else None,
                         "last_id": objects[-1]["id"] if objects else None, "has_more": has_more})
