"""Images end to end: the openai SDK against a real gateway whose image models are served by a mock OpenAI-format
upstream, a mock Gemini upstream and the demo provider; held at n x price, charged per image returned."""

from __future__ import annotations

import base64
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import ROOT, GatewayProcess, base_config, cli, demo_provider, fresh_minute, serve_gateway
from tests.conftest import wallet as shown_wallet
from tests.images_upstream import ImagesUpstream, image_bytes

KEY_ENV = "TT_IMAGES_UPSTREAM_KEY"
UPSTREAM_KEY = "images-upstream-secret"
PROMPT = "a lighthouse painted in watercolour, secret-prompt-words"
PRICE = 40_000_000  # img-openai's 1024x1024: $0.04
PRICE_HD = 80_000_000
GEMINI_PRICE = 39_000_000
PNG = image_bytes("client-upload", 7)


def images_config(upstream: str, log_path: Path) -> str:
    openai_prices = 'image = { "1024x1024" = "0.04", "1024x1024/hd" = "0.08", "1792x1024" = "0.08" }'
    gemini_prices = 'image = { "1024x1024" = "0.039", "1536x1024" = "0.039" }'
    parts = [f"""
{base_config(log_path, max_body_bytes=262144)}{demo_provider()}
[providers.up-openai]
format = "openai"
base_url = "{upstream}/openai/v1"
api_key_env = "{KEY_ENV}"
timeouts = {{ connect = 2, first_byte = 10, idle = 10, total = 30 }}

[providers.up-gemini]
format = "gemini"
base_url = "{upstream}/gemini/v1beta"
api_key_env = "{KEY_ENV}"
timeouts = {{ connect = 2, first_byte = 10, idle = 10, total = 30 }}

[providers.up-anthropic]
format = "anthropic"
base_url = "{upstream}/anthropic/v1"
api_key_env = "{KEY_ENV}"
timeouts = {{ connect = 2, first_byte = 10, idle = 10, total = 30 }}

[models.demo-image]
provider = "demo"
upstream_model = "image"
price = {{ input = "0", output = "0", image = {{ "1024x1024" = "0.02" }} }}

[models.chat-only]
provider = "up-openai"
price = {{ input = "1", output = "2" }}

[models.img-claude]
provider = "up-anthropic"
price = {{ {openai_prices} }}
"""]
    for name, upstream_model in (("img-openai", "img-ok"), ("img-openai-fewer", "img-fewer"),
                                 ("img-openai-none", "img-none"), ("img-openai-500", "img-500"),
                                 ("img-openai-400", "img-400"), ("img-openai-extra", "img-extra")):
        parts.append(f'[models.{name}]\nprovider = "up-openai"\nupstream_model = "{upstream_model}"\n'
                     f'price = {{ input = "0", output = "0", {openai_prices} }}\n')
    for name, upstream_model in (("img-gemini", "gem-ok"), ("img-gemini-flaky", "gem-flaky"),
                                 ("img-gemini-blocked", "gem-blocked"), ("img-gemini-500", "gem-500")):
        parts.append(f'[models.{name}]\nprovider = "up-gemini"\nupstream_model = "{upstream_model}"\n'
                     f'price = {{ input = "0", output = "0", {gemini_prices} }}\n')
    return "\n".join(parts)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ImagesUpstream]:
    server = ImagesUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(upstream: ImagesUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("images"), partial(images_config, upstream.base_url),
                             {KEY_ENV: UPSTREAM_KEY}, "imager", "100", ("Traceback",))


@pytest.fixture(scope="module")
def key(gw: GatewayProcess) -> str:
    return cli(gw.config, "keys", "create", "--account", "imager", env=gw.env)["key"]


@pytest.fixture(scope="module")
def client(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def wallet(gw: GatewayProcess, account: str = "imager") -> dict[str, Any]:
    return shown_wallet(gw, account)


def usage_row(gw: GatewayProcess, request_id: str) -> dict[str, Any] | None:
    """The request's usage row, or None when there is none (a request refused before any hold)."""
    run = subprocess.run([sys.executable, str(ROOT / "gateway.py"), "--config", str(gw.config), "usage",
                          "--request", request_id, "--json"], cwd=ROOT, env=gw.env, capture_output=True, timeout=60)
    out = orjson.loads(run.stdout)
    if run.returncode != 0:
        assert "no usage row" in out["error"]
        return None
    return out


def open_holds(gw: GatewayProcess) -> list[str]:
    return [h["request_id"] for h in cli(gw.config, "holds", env=gw.env)]


def generate(client: openai.OpenAI, **kw: Any) -> tuple[Any, str]:
    raw = client.images.with_raw_response.generate(**{"prompt": PROMPT, **kw})
    assert raw.headers["x-request-id"] == raw.headers["x-tt-request-id"]
    return raw.parse(), raw.headers["x-tt-request-id"]


def post(gw: GatewayProcess, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any], Any]:
    req = urllib.request.Request(gw.url + path, body, headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, dict(resp.headers), orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), orjson.loads(exc.read())


# -- OpenAI-format upstreams: passed through ----------------------------------------------------


def test_generation_passes_through_and_charges_each_image(gw: GatewayProcess, client: openai.OpenAI,
                                                           upstream: ImagesUpstream) -> None:
    out, rid = generate(client, model="img-openai", n=2)
    assert [base64.b64decode(d.b64_json) for d in out.data] == [image_bytes("img-ok", 0), image_bytes("img-ok", 1)]
    assert out.model == "img-openai"  # the upstream's name for it is never shown
    sent = upstream.of("img-ok")[-1]
    assert sent["json"] == {"model": "img-ok", "prompt": PROMPT, "n": 2, "size": "1024x1024"}  # the billed size
    assert sent["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    row = usage_row(gw, rid)
    assert row is not None and (row["cost"], row["units"], row["source"], row["status"]) == (2 * PRICE, 2, "upstream",
                                                                                            200)
    line = gw.log_entry(rid)
    assert (line["route"], line["model"], line["provider"], line["status"]) == ("/v1/images/generations",
                                                                                "img-openai", "up-openai", 200)
    assert (line["images_requested"], line["images_returned"], line["cost_nanousd"]) == (2, 2, 2 * PRICE)
    assert line["duration_ms"] >= line["upstream_ms"] > 0
    assert "secret-prompt-words" not in gw.log_path.read_text()


def test_three_asked_two_returned_is_charged_two(gw: GatewayProcess, client: openai.OpenAI) -> None:
    before = wallet(gw)
    out, rid = generate(client, model="img-openai-fewer", n=3, size="1024x1024", quality="hd")
    assert len(out.data) == 2
    after = wallet(gw)
    assert before["balance"] - after["balance"] == 2 * PRICE_HD
    assert after["held"] == before["held"] == 0
    row = usage_row(gw, rid)
    assert row is not None and (row["cost"], row["units"]) == (2 * PRICE_HD, 2)
    assert gw.log_entry(rid)["images_requested"] == 3


def test_never_charged_beyond_what_was_asked(gw: GatewayProcess, client: openai.OpenAI) -> None:
    out, rid = generate(client, model="img-openai-extra", n=1)
    assert len(out.data) == 3  # the upstream's answer is passed on as it is...
    row = usage_row(gw, rid)
    assert row is not None and (row["cost"], row["units"]) == (PRICE, 1)  # ...but only n images are charged


@pytest.mark.parametrize("model, status, error", [("img-openai-500", 502, openai.InternalServerError),
                                                  ("img-openai-400", 400, openai.BadRequestError),
                                                  ("img-gemini-500", 502, openai.InternalServerError)])
def test_upstream_failure_is_charged_nothing(gw: GatewayProcess, client: openai.OpenAI, model: str, status: int,
                                            error: type[Exception]) -> None:
    before = wallet(gw)
    with pytest.raises(error) as exc:
        client.images.generate(model=model, prompt=PROMPT, n=2)
    assert exc.value.status_code == status  # type: ignore[attr-defined]
    rid = exc.value.request_id  # type: ignore[attr-defined]
    if status == 400:  # the upstream's own code and param, with our request id
        assert (exc.value.code, exc.value.param) == ("invalid_value", "size")  # type: ignore[attr-defined]
        assert "Invalid value for size" in str(exc.value)
    after = wallet(gw)
    assert (after["balance"], after["held"]) == (before["balance"], 0)
    assert rid not in open_holds(gw)
    row = usage_row(gw, rid)
    assert row is not None and (row["cost"], row["units"], row["source"], row["status"]) == (0, 0, "none", status)
    line = gw.log_entry(rid)
    assert (line["images_returned"], line["cost_nanousd"], line["status"]) == (0, 0, status)
    assert line["upstream_error"]


def test_no_image_back_is_charged_nothing(gw: GatewayProcess, client: openai.OpenAI) -> None:
    out, rid = generate(client, model="img-openai-none", n=2)
    assert out.data == []
    row = usage_row(gw, rid)
    assert row is not None and (row["cost"], row["units"], row["status"]) == (0, 0, 200)


def test_urls_are_counted(gw: GatewayProcess, client: openai.OpenAI, upstream: ImagesUpstream) -> None:
    # the model img-openai asks the upstream model img-ok; response_format goes on as the client sent it
    out, rid = generate(client, model="img-openai", n=1, response_format="url", size="1792x1024")
    assert upstream.of("img-ok")[-1]["json"]["response_format"] == "url"
    assert len(out.data) == 1
    assert usage_row(gw, rid)["cost"] == 2 * PRICE  # type: ignore[index]


def test_the_quality_made_is_the_quality_paid_for(gw: GatewayProcess, client: openai.OpenAI,
                                                 upstream: ImagesUpstream) -> None:
    before = wallet(gw)
    sent = len(upstream.of("img-ok"))
    with pytest.raises(openai.BadRequestError) as exc:  # 1024x1024 prices hd apart: "high" has no price of its own
        client.images.generate(model="img-openai", prompt=PROMPT, size="1024x1024", quality="high")
    assert exc.value.param == "quality" and "hd" in exc.value.message
    assert len(upstream.of("img-ok")) == sent and wallet(gw) == before  # nothing held, nothing sent
    _, rid = generate(client, model="img-openai", size="1024x1024")  # the SIZE price: the upstream's default
    assert "quality" not in upstream.of("img-ok")[-1]["json"]
    assert usage_row(gw, rid)["cost"] == PRICE  # type: ignore[index]
    _, rid = generate(client, model="img-openai", size="1792x1024", quality="hd")  # a plain SIZE price only
    assert "quality" not in upstream.of("img-ok")[-1]["json"]  # billed at SIZE: the default quality is made
    assert usage_row(gw, rid)["cost"] == 2 * PRICE  # type: ignore[index]


def test_edit_reaches_the_upstream_intact(gw: GatewayProcess, client: openai.OpenAI, upstream: ImagesUpstream) -> None:
    mask = b"\x89PNG\r\n\x1a\n" + b"mask\r\n--not-a-boundary\r\n" * 50
    raw = client.images.with_raw_response.edit(model="img-openai", prompt=PROMPT, n=2, quality="hd",
                                               image=[("one.png", PNG, "image/png"), ("two.png", PNG[::-1], "image/png")],
                                               mask=("mask.png", mask, "image/png"), user="u-42")
    out, rid = raw.parse(), raw.headers["x-tt-request-id"]
    assert len(out.data) == 2
    sent = upstream.of("img-ok")[-1]
    assert sent["path"] == "/openai/v1/images/edits"
    assert sent["fields"] == {"model": "img-ok", "prompt": PROMPT, "n": "2", "quality": "hd", "user": "u-42",
                              "size": "1024x1024"}
    assert sent["files"] == [("image[]", "one.png", "image/png", PNG), ("image[]", "two.png", "image/png", PNG[::-1]),
                             ("mask", "mask.png", "image/png", mask)]
    assert usage_row(gw, rid)["cost"] == 2 * PRICE_HD  # type: ignore[index]
    assert gw.log_entry(rid)["route"] == "/v1/images/edits"


# -- Gemini-format upstreams: translated ------------------------------------------------------


def test_gemini_round_trip(gw: GatewayProcess, client: openai.OpenAI, upstream: ImagesUpstream) -> None:
    before = len(upstream.of("gem-ok"))
    out, rid = generate(client, model="img-gemini", n=2, size="1536x1024")
    sent = upstream.of("gem-ok")[before:]
    assert len(sent) == 2  # one request per image
    for request in sent:
        assert request["path"] == "/gemini/v1beta/models/gem-ok:generateContent"
        assert request["headers"]["x-goog-api-key"] == UPSTREAM_KEY
        assert request["json"] == {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
                                   "generationConfig": {"responseModalities": ["IMAGE"],
                                                        "imageConfig": {"aspectRatio": "3:2"}}}
    got = sorted(base64.b64decode(d.b64_json) for d in out.data)  # the final images, never the thought drafts
    assert got == sorted([image_bytes("gem-ok", before), image_bytes("gem-ok", before + 1)])
    assert out.output_format == "png" and isinstance(out.created, int)
    row = usage_row(gw, rid)
    assert row is not None and (row["cost"], row["units"]) == (2 * GEMINI_PRICE, 2)


def test_gemini_edit_sends_the_image_inline(gw: GatewayProcess, client: openai.OpenAI,
                                            upstream: ImagesUpstream) -> None:
    out = client.images.edit(model="img-gemini", prompt="make it blue", image=("in.png", PNG, "application/octet-stream"))
    assert len(out.data) == 1
    parts = upstream.of("gem-ok")[-1]["json"]["contents"][0]["parts"]
    assert parts == [{"text": "make it blue"}, {"inlineData": {"mimeType": "image/png",
                                                               "data": base64.b64encode(PNG).decode()}}]


def test_gemini_partial_failure_charges_what_came_back(gw: GatewayProcess, client: openai.OpenAI) -> None:
    before = wallet(gw)
    out, rid = generate(client, model="img-gemini-flaky", n=3)
    assert len(out.data) == 2
    assert before["balance"] - wallet(gw)["balance"] == 2 * GEMINI_PRICE
    line = gw.log_entry(rid)
    assert (line["images_requested"], line["images_returned"], line["upstream_error"]) == (3, 2, "status")


def test_gemini_safety_block_is_a_400_charged_nothing(gw: GatewayProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(model="img-gemini-blocked", prompt=PROMPT)
    assert exc.value.code == "content_policy_violation" and "SAFETY" in str(exc.value)
    row = usage_row(gw, exc.value.request_id)  # type: ignore[arg-type]
    assert row is not None and row["cost"] == 0


# -- the demo provider -----------------------------------------------------------------------------


def test_demo_images(gw: GatewayProcess, client: openai.OpenAI) -> None:
    out, rid = generate(client, model="demo-image", n=2)
    pngs = [base64.b64decode(d.b64_json) for d in out.data]
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs) and pngs[0] != pngs[1]
    assert usage_row(gw, rid)["cost"] == 2 * 20_000_000  # type: ignore[index]
    again, _ = generate(client, model="demo-image", n=1)
    assert base64.b64decode(again.data[0].b64_json) == pngs[0]  # deterministic
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(model="demo-image", prompt=PROMPT, response_format="url")
    assert exc.value.param == "response_format"
    assert usage_row(gw, exc.value.request_id)["cost"] == 0  # type: ignore[arg-type, index]


# -- refusals: they change nothing ------------------------------------------------------------------


def test_shortfall_is_a_402_that_holds_nothing(gw: GatewayProcess, upstream: ImagesUpstream) -> None:
    cli(gw.config, "accounts", "create", "poor", "--credit", "0.05", env=gw.env)
    poor = openai.OpenAI(base_url=gw.base_url, api_key=cli(gw.config, "keys", "create", "--account", "poor",
                                                           env=gw.env)["key"], max_retries=0, timeout=20)
    calls = len(upstream.requests)
    with pytest.raises(openai.APIStatusError) as exc:
        poor.images.generate(model="img-openai", prompt=PROMPT, n=2)  # $0.08 held, $0.05 there
    assert exc.value.status_code == 402 and exc.value.code == "billing_shortfall"  # type: ignore[attr-defined]
    assert "ask for fewer images (n)" in exc.value.message and "max_tokens" not in exc.value.message
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert len(upstream.requests) == calls
    assert usage_row(gw, exc.value.request_id) is None  # type: ignore[arg-type]
    out = poor.images.generate(model="img-openai", prompt=PROMPT, n=1)
    assert len(out.data) == 1
    assert wallet(gw, "poor")["balance"] == 50_000_000 - PRICE


def test_key_refusals(gw: GatewayProcess) -> None:
    status, headers, body = post(gw, "/v1/images/generations", orjson.dumps({"model": "img-openai", "prompt": "x"}),
                                 {"content-type": "application/json"})
    assert status == 401 and headers["x-tt-request-id"] == body["error"]["request_id"]
    narrow = cli(gw.config, "keys", "create", "--account", "imager", "--models", "demo-image", env=gw.env)["key"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        openai.OpenAI(base_url=gw.base_url, api_key=narrow, max_retries=0).images.generate(model="img-openai",
                                                                                           prompt=PROMPT)
    assert denied.value.param == "model"  # type: ignore[attr-defined]
    slow = cli(gw.config, "keys", "create", "--account", "imager", "--rpm", "1", env=gw.env)["key"]
    fresh_minute()
    c = openai.OpenAI(base_url=gw.base_url, api_key=slow, max_retries=0, timeout=20)
    assert len(c.images.generate(model="demo-image", prompt=PROMPT).data) == 1
    with pytest.raises(openai.RateLimitError) as limited:
        c.images.generate(model="demo-image", prompt=PROMPT)
    assert limited.value.response.headers["retry-after"]


def form(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart body as the openai SDK's HTTP library writes it."""
    import httpx2

    req = httpx2.Request("POST", "http://gw/v1/images/edits", data=fields,
                         files=[(name, (f"{name}.png", data, "image/png")) for name, data in files])
    return req.read(), req.headers["content-type"]


GEN = "/v1/images/generations"
EDIT = "/v1/images/edits"
BAD_REQUESTS: list[tuple[str, dict[str, Any], list[tuple[str, bytes]] | None, str | None]] = [
    (GEN, {"model": "img-openai"}, None, "prompt"),
    (GEN, {"model": "img-openai", "prompt": ""}, None, "prompt"),
    (GEN, {"model": "img-openai", "prompt": "x", "n": 0}, None, "n"),
    (GEN, {"model": "img-openai", "prompt": "x", "n": 11}, None, "n"),
    (GEN, {"model": "img-openai", "prompt": "x", "n": "2"}, None, "n"),
    (GEN, {"model": "img-openai", "prompt": "x", "size": "512x512"}, None, "size"),
    (GEN, {"model": "img-openai", "prompt": "x", "response_format": "gif"}, None, "response_format"),
    (GEN, {"model": "img-openai", "prompt": "x", "stream": True}, None, "stream"),
    (GEN, {"prompt": "x"}, None, "model"),
    (GEN, {"model": "chat-only", "prompt": "x"}, None, "model"),
    (GEN, {"model": "img-claude", "prompt": "x"}, None, "model"),
    (GEN, {"model": "img-gemini", "prompt": "x", "response_format": "url"}, None, "response_format"),
    (GEN, {"model": "img-gemini", "prompt": "x", "size": "1792x1024"}, None, "size"),
    (EDIT, {"model": "img-openai", "prompt": "x"}, None, None),  # JSON, not a form
    (EDIT, {"model": "img-openai", "prompt": "x"}, [("mask", PNG)], "image"),
    (EDIT, {"model": "img-openai", "prompt": "x", "n": "many"}, [("image", PNG)], "n"),
    (EDIT, {"model": "img-gemini", "prompt": "x"}, [("image", PNG), ("mask", PNG)], "mask"),
    (EDIT, {"model": "img-gemini", "prompt": "x"}, [("image", b"GIF89a")], "image"),
]


def test_bad_requests_are_400s_that_change_nothing(gw: GatewayProcess, key: str, upstream: ImagesUpstream) -> None:
    before, calls = wallet(gw), len(upstream.requests)
    auth = {"authorization": f"Bearer {key}"}
    ids = []
    for path, fields, files, param in BAD_REQUESTS:
        if files is None:
            body, ctype = orjson.dumps(fields), "application/json"
        else:
            body, ctype = form(fields, files)
        status, headers, out = post(gw, path, body, {**auth, "content-type": ctype})
        assert status == 400, (path, fields, out)
        assert out["error"]["param"] == param, (fields, out)
        assert out["error"]["type"] == "invalid_request_error" and out["error"]["message"]
        assert headers["x-tt-request-id"] == out["error"]["request_id"]
        ids.append(out["error"]["request_id"])
    assert "does not generate images" in post(gw, GEN, orjson.dumps({"model": "chat-only", "prompt": "x"}),
                                              {**auth, "content-type": "application/json"})[2]["error"]["message"]
    assert "'img-claude'" in post(gw, GEN, orjson.dumps({"model": "img-claude", "prompt": "x"}),
                                  {**auth, "content-type": "application/json"})[2]["error"]["message"]
    status, _, out = post(gw, GEN, orjson.dumps({"model": "nope", "prompt": "x"}),
                          {**auth, "content-type": "application/json"})
    assert (status, out["error"]["code"]) == (404, "model_not_found")
    body, ctype = form({"model": "img-openai", "prompt": "x"}, [("image", b"\x00" * 300_000)])
    status, _, out = post(gw, EDIT, body, {**auth, "content-type": ctype})
    assert (status, out["error"]["code"]) == (413, "request_too_large")
    status, _, out = post(gw, "/v1/images/variations", b"{}", {**auth, "content-type": "application/json"})
    assert status == 404
    assert len(upstream.requests) == calls
    after = wallet(gw)
    assert (after["balance"], after["held"]) == (before["balance"], before["held"])
    assert all(usage_row(gw, rid) is None for rid in ids[:3])
    assert gw.log_entry(ids[0])["status"] == 400


def test_metrics_count_image_requests(gw: GatewayProcess) -> None:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'tokentoll_requests_total{model="img-openai",route="/v1/images/generations",status="200"}' in text
    assert 'tokentoll_upstream_errors_total{kind="status_400",provider="up-openai"}' in text
