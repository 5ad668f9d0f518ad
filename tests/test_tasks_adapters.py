"""The pure parts of the video tasks: routes, create requests (JSON and the SDK's multipart), objects renamed
and their statuses, list and download queries, and what a task holds and costs."""

from __future__ import annotations

import warnings
from typing import Any

import httpx2
import orjson
import pytest

from adapters import multipart
from adapters.internal import InvalidRequest
from adapters.openai import videos
from billing.tasks import completed_cost, hold_amount, reported_seconds, task_charge

FILE = b"\x89PNG\r\n\x1a\n--not-a-boundary\r\n\r\n" + bytes(range(256))


def sdk_request(**kwargs: Any) -> httpx2.Request:
    """The exact request the openai SDK sends for videos.create (captured, never sent)."""
    from openai import OpenAI

    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        request.read()
        seen.append(request)
        return httpx2.Response(200, json={"id": "v", "object": "video", "model": "m", "status": "queued",
                                          "progress": 0, "created_at": 1, "seconds": "4", "size": "720x1280"})

    client = OpenAI(api_key="k", base_url="http://x/v1", http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.videos.create(**kwargs)
    return seen[0]


def test_the_sdks_multipart_create_is_read_and_rewritten_byte_exact() -> None:
    req = sdk_request(model="video-pub", prompt="a cat, 🐈", seconds="8", size="1280x720",
                      input_reference=("ref.png", FILE, "image/png"))
    ctype = req.headers["content-type"]
    parsed = videos.parse_create(req.content, ctype)
    assert (parsed.model, parsed.prompt, parsed.seconds, parsed.size, parsed.multipart) == \
        ("video-pub", "a cat, 🐈", 8, "1280x720", True)
    body, up_type = videos.upstream_request(parsed, "sora-2-pro")
    assert up_type == ctype  # the client's own boundary
    parts = {p.name: p for p in multipart.parse_multipart(body, up_type)}
    assert parts["model"].data == b"sora-2-pro"
    assert parts["input_reference"].data == FILE and parts["input_reference"].filename == "ref.png"
    assert parts["input_reference"].content_type == "image/png"
    sent = {p.name: p for p in multipart.parse_multipart(req.content, ctype)}
    assert parts["input_reference"].raw_headers == sent["input_reference"].raw_headers  # forwarded as it came
    assert parts["prompt"].data.decode() == "a cat, 🐈" and parts["seconds"].data == b"8"


def test_json_create_defaults_and_normalizes() -> None:
    parsed = videos.parse_create(b'{"prompt": "hi", "seconds": 12, "input_reference": {"image_url": "https://x/y.png"}}',
                                 "application/json")
    assert (parsed.model, parsed.seconds, parsed.size, parsed.multipart) == ("sora-2", 12, None, False)
    body, up_type = videos.upstream_request(parsed, "up")
    assert up_type == "application/json"
    assert orjson.loads(body) == {"prompt": "hi", "seconds": "12", "model": "up",
                                  "input_reference": {"image_url": "https://x/y.png"}}
    assert videos.parse_create(b'{"prompt": "hi"}', "").seconds == 4


@pytest.mark.parametrize("body, param", [
    (b'{"model": "m"}', "prompt"),
    (b'{"model": "m", "prompt": "   "}', "prompt"),
    (b'{"model": "m", "prompt": "x", "seconds": "5"}', "seconds"),
    (b'{"model": "m", "prompt": "x", "seconds": true}', "seconds"),
    (b'{"model": "m", "prompt": "x", "seconds": 4.0}', "seconds"),
    (b'{"model": 3, "prompt": "x"}', "model"),
    (b'{"model": "m", "prompt": "x", "size": "big"}', "size"),
    (b'{"model": "m", "prompt": "x", "input_reference": "file-1"}', "input_reference"),
    (b'{"model": "m", "prompt": "x", "input_reference": {"url": "x"}}', "input_reference"),
    (b'[1]', None),
    (b'{"model": ', None),
])
def test_bad_json_creates_are_refused_with_the_param(body: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as err:
        videos.parse_create(body, "application/json")
    assert err.value.param == param


def form(*parts: tuple[str, str | None, bytes], boundary: str = "b0und") -> tuple[bytes, str]:
    encoded = [multipart.Part(name, filename, None, data) for name, filename, data in parts]
    return multipart.encode_multipart(encoded, boundary), multipart.form_content_type(boundary)


def test_multipart_create_refusals() -> None:
    body, ctype = form(("model", None, b"m"), ("prompt", None, b"x"), ("seconds", None, b"7"))
    with pytest.raises(InvalidRequest, match="seconds"):
        videos.parse_create(body, ctype)
    body, ctype = form(("prompt", "p.txt", b"x"))
    with pytest.raises(InvalidRequest, match="text field"):
        videos.parse_create(body, ctype)
    body, ctype = form(("prompt", None, b"x"), ("prompt", None, b"y"))
    with pytest.raises(InvalidRequest, match="twice"):
        videos.parse_create(body, ctype)
    body, ctype = form(("prompt", None, b"\xff\xfe"))
    with pytest.raises(InvalidRequest, match="UTF-8"):
        videos.parse_create(body, ctype)
    good, ctype = form(("prompt", None, b"x"))
    with pytest.raises(InvalidRequest, match="not closed"):
        videos.parse_create(good[:-8], ctype)
    with pytest.raises(InvalidRequest, match="boundary"):
        videos.parse_create(good, "multipart/form-data")
    with pytest.raises(InvalidRequest, match="Content-Type"):
        videos.parse_create(good, "text/plain")
    assert videos.parse_create(good, 'multipart/form-data; boundary="b0und"').prompt == "x"


def test_a_boundary_that_needs_quotes_is_kept_and_quoted() -> None:
    body, ctype = form(("prompt", None, b"x"), ("input_reference", "r.png", FILE), boundary="a b:c")
    assert ctype == 'multipart/form-data; boundary="a b:c"'
    parsed = videos.parse_create(body, ctype)
    out, up_type = videos.upstream_request(parsed, "up")
    assert up_type == ctype
    assert [(p.name, p.data) for p in multipart.parse_multipart(out, up_type)] == [
        ("prompt", b"x"), ("input_reference", FILE), ("model", b"up")]


def test_routes() -> None:
    assert videos.route("POST", "/v1/videos") == ("create", "")
    assert videos.route("GET", "/v1/videos") == ("list", "")
    assert videos.route("GET", "/v1/videos/video_tt_1") == ("retrieve", "video_tt_1")
    assert videos.route("DELETE", "/v1/videos/video_tt_1") == ("delete", "video_tt_1")
    assert videos.route("GET", "/v1/videos/video_tt_1/content") == ("content", "video_tt_1")
    assert videos.route("POST", "/v1/videos/video_tt_1/cancel") == ("cancel", "video_tt_1")
    assert videos.route("PUT", "/v1/videos/video_tt_1") == (None, "GET, DELETE")
    assert videos.route("POST", "/v1/videos/video_tt_1/remix") == (None, "unknown")
    assert videos.route("POST", "/v1/videos/edits") == (None, "unknown")
    assert videos.hold_request_id(videos.task_id("req_abc")) == "req_abc"


def test_objects_carry_our_id_and_name_and_a_status_the_sdk_knows() -> None:
    up = {"id": "video_up", "object": "video", "model": "sora-2-pro", "status": "processing", "progress": 40,
          "remixed_from_video_id": "video_other", "seconds": "8"}
    shown = videos.client_object(up, "video_tt_1", "my-video")
    assert (shown["id"], shown["model"], shown["status"], shown["remixed_from_video_id"]) == \
        ("video_tt_1", "my-video", "in_progress", None)
    assert "video_up" not in orjson.dumps(shown).decode()
    assert videos.task_status({"status": "completed"}) == "completed"
    assert videos.task_status({"status": "canceled"}) == "failed"
    assert videos.task_status({"status": "something-new"}) == "in_progress"
    assert videos.task_status({}) == "in_progress"
    failed = videos.client_object({"status": "failed"}, "v", "m")
    assert failed["error"]["code"] == "video_generation_failed"
    for status, code in (("cancelled", "video_cancelled"), ("expired", "video_expired")):
        out = videos.rendered(shown, status)
        assert out["status"] == "failed" and out["error"]["code"] == code
    assert videos.rendered(shown, "in_progress") is shown


def test_queries() -> None:
    assert videos.list_query(b"") == (None, 20, "desc")
    assert videos.list_query(b"after=video_tt_1&limit=100&order=asc") == ("video_tt_1", 100, "asc")
    for bad in (b"limit=0", b"limit=101", b"limit=x", b"order=up"):
        with pytest.raises(InvalidRequest):
            videos.list_query(bad)
    assert videos.variant_query(b"") == "video"
    assert videos.variant_query(b"variant=spritesheet") == "spritesheet"
    with pytest.raises(InvalidRequest):
        videos.variant_query(b"variant=gif")
    page = orjson.loads(videos.list_page([{"id": "a"}, {"id": "b"}], True))
    assert page == {"object": "list", "data": [{"id": "a"}, {"id": "b"}], "first_id": "a", "last_id": "b",
                    "has_more": True}


def test_prices() -> None:
    assert hold_amount(None, 100, 8) == 800
    assert hold_amount(50, 100, 8) == 850
    assert hold_amount(50, None, 8) == 50
    assert completed_cost(None, 100, 4, 800) == 400  # made fewer seconds than asked: charged for those
    assert completed_cost(None, 100, 12, 800) == 800  # more: never above the hold
    assert completed_cost(50, 100, 4, 850) == 450
    assert completed_cost(None, 100, None, 800) == 800  # the upstream says nothing: the seconds held for
    assert completed_cost(50, None, 4, 50) == 50
    assert [reported_seconds({"seconds": s}) for s in ("8", 8, "8.0", "8.2", " 4 ", "x", "-1", None, True)] == \
        [8, 8, 8, 9, 4, None, None, None, None]
    row = {"status": "completed", "object": orjson.dumps({"seconds": "4"}).decode(), "model": "m", "amount": 800}
    assert task_charge(row, lambda m: (None, 100)) == (400, 4)
    assert task_charge(row, lambda m: None) == (800, 4)  # the model left the config: the hold
    assert task_charge({**row, "status": "expired"}, lambda m: (None, 100)) == (0, 0)
