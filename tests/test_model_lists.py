"""The model lists answer per key: /v1/models (OpenAI's and Anthropic's shapes) and /v1beta/models (Gemini's) show
exactly the models the caller's key may use, through each official SDK, and refuse a caller with no key."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gt

from tests.conftest import GatewayProcess, cli

ALLOWED = ("scripted-openai", "scripted-anthropic", "embed-gemini")


@pytest.fixture(scope="module")
def narrow_key(native_gw: GatewayProcess) -> str:
    """A key of the matrix account that may use three models only."""
    return cli(native_gw.config, "keys", "create", "--account", "matrix", "--name", "narrow", "--models",
               ",".join(ALLOWED), env=native_gw.env)["key"]


def configured(gw: GatewayProcess) -> list[str]:
    """Every configured model, in the order of the public price list."""
    return [row["model"] for row in get(gw, "/v1/pricing", {})[2]["data"]]


def get(gw: GatewayProcess, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(gw.url + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_openai_sdk_lists_the_models_of_its_key(native_gw: GatewayProcess, native_key: str, narrow_key: str) -> None:
    narrow = openai.OpenAI(base_url=native_gw.base_url, api_key=narrow_key, max_retries=0)
    assert [m.id for m in narrow.models.list()] == [m for m in configured(native_gw) if m in ALLOWED]
    assert narrow.models.retrieve("scripted-openai").id == "scripted-openai"
    with pytest.raises(openai.NotFoundError) as refused:
        narrow.models.retrieve("scripted-gemini")  # configured, but not this key's
    assert "may not use it" in refused.value.message
    full = openai.OpenAI(base_url=native_gw.base_url, api_key=native_key, max_retries=0)
    assert [m.id for m in full.models.list()] == configured(native_gw)


def test_anthropic_sdk_lists_the_models_of_its_key(native_gw: GatewayProcess, narrow_key: str) -> None:
    claude = anthropic.Anthropic(base_url=native_gw.url, api_key=narrow_key, max_retries=0)
    assert sorted(m.id for m in claude.models.list()) == sorted(ALLOWED)
    assert claude.models.retrieve("scripted-anthropic").id == "scripted-anthropic"
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("scripted-openai-nope")
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("scripted-gemini")


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
def test_genai_lists_the_models_of_its_key(native_gw: GatewayProcess, narrow_key: str, api_version: str) -> None:
    g = genai.Client(api_key=narrow_key, http_options=gt.HttpOptions(base_url=native_gw.url, api_version=api_version,
                                                                     timeout=20_000))
    assert sorted(m.name for m in g.models.list()) == sorted(f"models/{m}" for m in ALLOWED)
    assert g.models.get(model="embed-gemini").name == "models/embed-gemini"
    with pytest.raises(genai.errors.ClientError) as refused:
        g.models.get(model="scripted-gemini")
    assert refused.value.code == 404


def test_a_gemini_key_in_the_query_string_lists_too(native_gw: GatewayProcess, narrow_key: str) -> None:
    status, _, body = get(native_gw, f"/v1beta/models?key={narrow_key}", {})
    assert status == 200 and sorted(m["name"] for m in body["models"]) == sorted(f"models/{m}" for m in ALLOWED)


@pytest.mark.parametrize("path, headers, dialect", [
    ("/v1/models", {}, "openai"),
    ("/v1/models/scripted-openai", {}, "openai"),
    ("/v1/models", {"anthropic-version": "2023-06-01"}, "anthropic"),
    ("/v1/models/scripted-anthropic", {"anthropic-version": "2023-06-01"}, "anthropic"),
    ("/v1beta/models", {}, "gemini"),
    ("/v1beta/models/scripted-gemini", {}, "gemini"),
    ("/v1/models", {"x-goog-api-client": "google-genai-sdk/1.0"}, "gemini"),
])
def test_no_key_is_a_401_in_the_callers_dialect(native_gw: GatewayProcess, path: str, headers: dict[str, str],
                                                dialect: str) -> None:
    status, answer_headers, body = get(native_gw, path, headers)
    assert status == 401
    assert answer_headers["x-tt-request-id"].startswith("req_")
    if dialect == "openai":
        assert body["error"]["code"] == "missing_api_key" and "data" not in body
    elif dialect == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    else:
        assert body["error"]["status"] == "UNAUTHENTICATED" and body["error"]["code"] == 401


def test_an_unknown_or_disabled_key_is_refused(native_gw: GatewayProcess) -> None:
    made = cli(native_gw.config, "keys", "create", "--account", "matrix", "--name", "soon-off", env=native_gw.env)
    sdk = openai.OpenAI(base_url=native_gw.base_url, api_key=made["key"], max_retries=0)
    assert len(sdk.models.list().data) == len(configured(native_gw))
    cli(native_gw.config, "keys", "disable", str(made["id"]), env=native_gw.env)
    with pytest.raises(openai.AuthenticationError):
        sdk.models.list()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=native_gw.base_url, api_key="sk-tt-" + "0" * 40, max_retries=0).models.list()


def test_the_public_prices_need_no_key(native_gw: GatewayProcess) -> None:
    status, _, body = get(native_gw, "/v1/pricing", {})
    assert status == 200 and {"scripted-openai", "scripted-gemini"} <= {row["model"] for row in body["data"]}
