"""GET /openapi.json (core/openapi.py): valid OpenAPI 3.1, every route served and nothing else (the /console pages
are a browser UI, left out on purpose), /admin behind its token, and schemas the real error bodies match."""

from __future__ import annotations

import re
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jsonschema
import orjson
import pytest
from openapi_spec_validator import validate
from starlette.routing import Match, Mount, Route

from adapters.openai import videos
from core import openapi
from core.app import Gateway
from core.config import load
from core.dialects import GEMINI_METHODS, GEMINI_PREFIXES, OPENAI_ROUTES, relay_call
from core.images import ROUTES as IMAGE_ROUTES
from core.tasks import ROUTE_LABELS as VIDEO_ACTIONS
from tests.conftest import DEMO_ECHO, ROOT, GatewayProcess, base_config, cli, demo_provider, serve_gateway

NOT_DESCRIBED = ("/console",)  # the web console: HTML pages for a browser, not an API
DOC = orjson.loads(openapi.DOCUMENT)
VERBS = ("get", "post", "put", "patch", "delete")


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for verb in VERBS:
            if verb in item:
                yield verb, path, item[verb]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


@pytest.fixture(scope="module")
def gateway_object(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    """The gateway as `serve` builds it (not started): its Starlette router holds every route but the relay's."""
    tmp = tmp_path_factory.mktemp("openapi-routes")
    (tmp / "config.toml").write_text(base_config(tmp / "requests.log") + demo_provider() + DEMO_ECHO)
    return Gateway(load(tmp / "config.toml"))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("openapi"), lambda log: base_config(log) + demo_provider() +
                             DEMO_ECHO, {}, "someone", "1", ("Traceback",))


def fetch(gw: GatewayProcess, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(gw.url + path, headers=headers or {}), timeout=20) as r:
            return r.status, r.headers["content-type"], r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["content-type"], err.read()


def test_the_served_document_is_valid_openapi_3_1_and_is_the_one_built(gw: GatewayProcess) -> None:
    status, ctype, body = fetch(gw, "/openapi.json")
    assert (status, ctype, body) == (200, "application/json", openapi.DOCUMENT)
    document = orjson.loads(body)
    validate(document)  # raises on an invalid document
    assert document["openapi"].startswith("3.1")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert document["info"]["version"] == pyproject["project"]["version"]
    _, _, metrics = fetch(gw, "/metrics")
    assert b'route="/openapi.json"' in metrics


def test_every_starlette_route_is_in_the_document_but_the_console(gateway_object: Gateway) -> None:
    seen_console = False
    for route in gateway_object.router.routes:
        if isinstance(route, Mount):
            assert route.path in NOT_DESCRIBED, f"a mount the document does not describe: {route.path}"
            seen_console = True
            continue
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {model_id:path} -> {model_id}
        assert path in DOC["paths"], f"{route.path} is served but not in /openapi.json"
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in DOC["paths"][path], f"{method} {route.path} is not in /openapi.json"
    assert seen_console


def test_every_relay_image_and_video_route_is_in_the_document() -> None:
    for path in OPENAI_ROUTES:
        assert "post" in DOC["paths"][path], path
    for prefix in GEMINI_PREFIXES:
        for method in GEMINI_METHODS:
            assert "post" in DOC["paths"][f"{prefix}{{model}}:{method}"], (prefix, method)
    for path in IMAGE_ROUTES:
        assert "post" in DOC["paths"][path], path
    documented_actions = {videos.route(verb.upper(), concrete(path))[0] for verb, path, _ in operations()
                          if path.startswith("/v1/videos")}
    assert documented_actions == set(VIDEO_ACTIONS)


def test_the_document_lists_nothing_the_gateway_does_not_serve(gateway_object: Gateway) -> None:
    for verb, path, _ in operations():
        method, url = verb.upper(), concrete(path)
        call = relay_call(method, url, b"")
        if call is not None:
            assert method == "POST" and call.endpoint in {*GEMINI_METHODS.values(),
                                                          *(c.endpoint for c in OPENAI_ROUTES.values())}, path
        elif url.startswith("/v1/images/"):
            assert method == "POST" and url in IMAGE_ROUTES, path
        elif url.startswith("/v1/videos"):
            assert videos.route(method, url)[0] is not None, f"{verb} {path}"
        else:
            scope = {"type": "http", "method": method, "path": url, "root_path": "", "query_string": b"",
                     "headers": []}
            assert any(r.matches(scope)[0] == Match.FULL for r in gateway_object.router.routes), f"{verb} {path}"


def test_admin_needs_the_admin_token_and_nothing_else_does() -> None:
    for _, path, operation in operations():
        uses_admin = {"adminToken": []} in operation["security"]
        assert uses_admin == path.startswith("/admin/"), path
        if uses_admin:
            assert operation["security"] == [{"adminToken": []}]
    admin = DOC["components"]["securitySchemes"]["adminToken"]
    assert (admin["type"], admin["scheme"]) == ("http", "bearer")


def test_key_routes_take_the_key_and_the_relay_points_at_the_providers_references() -> None:
    for path in ("/v1/balance", "/v1/dashboard/billing/usage", "/v1/recharge/orders", "/v1/chat/completions",
                 "/v1/messages", "/v1/videos"):
        for verb in VERBS:
            if verb in DOC["paths"][path]:
                assert {"bearerKey": []} in DOC["paths"][path][verb]["security"], (verb, path)
    assert {"googleQueryKey": []} in DOC["paths"]["/v1beta/models/{model}:generateContent"]["post"]["security"]
    assert {"googleQueryKey": []} not in DOC["paths"]["/v1/chat/completions"]["post"]["security"]
    sites = {"openai": openapi.OPENAI_DOCS, "anthropic": openapi.ANTHROPIC_DOCS, "gemini": openapi.GEMINI_DOCS}
    for path, item in DOC["paths"].items():
        call = relay_call("POST", concrete(path), b"")
        if call is not None:
            assert item["post"]["externalDocs"]["url"].startswith(sites[call.dialect]), path


@pytest.mark.parametrize("headers,schema", [({}, "OpenAIError"), ({"anthropic-version": "2023-06-01"},
                                                                  "AnthropicError")])
def test_real_error_bodies_match_the_documented_shapes(gw: GatewayProcess, headers: dict[str, str],
                                                        schema: str) -> None:
    key = cli(gw.config, "keys", "create", "--account", "someone", env=gw.env)["key"]
    status, _, body = fetch(gw, "/v1/models/no-such-model", {**headers, "Authorization": f"Bearer {key}"})
    assert status == 404
    jsonschema.validate(orjson.loads(body), DOC["components"]["schemas"][schema])
    status, _, body = fetch(gw, "/v1beta/models/no-such-model", {"x-goog-api-key": key})
    assert status == 404
    jsonschema.validate(orjson.loads(body), DOC["components"]["schemas"]["GeminiError"])
    with pytest.raises(jsonschema.ValidationError):  # the shapes differ: a schema that accepts anything fails here
        jsonschema.validate(orjson.loads(body), DOC["components"]["schemas"]["AnthropicError"])


def test_the_balance_answer_matches_its_documented_schema(gw: GatewayProcess) -> None:
    key = cli(gw.config, "keys", "create", "--account", "someone", env=gw.env)["key"]
    for path, schema in (("/v1/balance", "Balance"), ("/v1/dashboard/billing/subscription", "BillingSubscription"),
                         ("/v1/dashboard/billing/usage", "BillingUsage")):
        status, _, body = fetch(gw, path, {"Authorization": f"Bearer {key}"})
        assert status == 200
        jsonschema.validate(orjson.loads(body), DOC["components"]["schemas"][schema])

