"""A base URL one segment off, through the openai, anthropic and google-genai SDKs and through curl: a 404 in the
caller's own error type that names the base URL to use (never the wrong one again), with a request id, and free."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as gerrors
from google.genai import types as gt

from tests.conftest import GatewayProcess, wallet
from tests.native_upstream import NativeUpstream

HELLO = [{"role": "user", "content": "hello"}]
URL_IN_TEXT = re.compile(r"https?://[^\s\"()]+?(?=[.;,]?(?:[\s\"()]|$))")  # a URL, without the sentence's stop
GEMINI_CALL = "/v1beta/models/scripted-gemini:generateContent"


@contextmanager
def nothing_charged(gw: GatewayProcess, upstream: NativeUpstream) -> Iterator[None]:
    """No request in the block reaches an upstream, holds or charges anything."""
    before, sent = wallet(gw, "matrix"), len(upstream.requests)
    yield
    assert len(upstream.requests) == sent, [r.path for r in upstream.requests[sent:]]
    assert wallet(gw, "matrix") == before


def assert_advice(message: str, request_id: str | None, right_base: str, right_curl: str, wrong: str) -> None:
    """The message tells the SDK's user to set `right_base` and curl's user to call `right_curl` ("POST <url>"), and
    names no other URL (never the `wrong` one as a base URL); the answer carries its request id."""
    assert request_id and request_id.startswith("req_"), request_id
    assert re.search(rf"[Ss]et base_url to {re.escape(right_base)} \(", message), message
    assert f"with curl, {right_curl}" in message, message
    assert set(URL_IN_TEXT.findall(message)) == {right_base, right_curl.split()[1]}, message
    assert wrong != right_base and not re.search(rf"base_url(?: to |=\"|\": \"){re.escape(wrong)}[ \"]", message)


def sdk_404(call: Callable[[], Any], error_type: type[Exception]) -> Exception:
    with pytest.raises(error_type) as caught:
        call()
    return caught.value


# -- the openai SDK: base_url must be <root>/v1 ------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/v1/v1", "/v1/chat/completions", "/v1beta", "/chat/completions"],
                         ids=["missing-v1", "v1-doubled", "endpoint-pasted", "v1beta", "endpoint-without-v1"])
def test_openai_sdk_with_a_wrong_base_url(native_gw: GatewayProcess, native_key: str, native: NativeUpstream,
                                          suffix: str) -> None:
    root = native_gw.url
    wrong = openai.OpenAI(base_url=root + suffix, api_key=native_key, max_retries=0, timeout=20)
    calls: list[tuple[Callable[[], Any], str]] = [
        (lambda: wrong.chat.completions.create(model="scripted-openai", messages=HELLO),
         f"POST {root}/v1/chat/completions"),
        (lambda: wrong.embeddings.create(model="embed-openai", input="hello"), f"POST {root}/v1/embeddings"),
    ]
    # with base_url <root>/v1beta, models.list() is GET /v1beta/models, Gemini's own list: a 200 in Gemini's shape,
    # which the openai SDK reads as an empty page (no "data"). The URL is a served one, so no 404 can say more.
    if suffix != "/v1beta":
        calls.append((lambda: list(wrong.models.list()), f"GET {root}/v1/models"))
    with nothing_charged(native_gw, native):
        for call, right_curl in calls:
            err = sdk_404(call, openai.NotFoundError)
            assert isinstance(err, openai.NotFoundError) and err.status_code == 404 and err.code == "unknown_url"
            assert isinstance(err.body, dict) and err.body["message"] in err.message
            assert_advice(err.body["message"], err.response.headers.get("x-tt-request-id"), f"{root}/v1", right_curl,
                          root + suffix)


# -- the anthropic SDK: base_url must be <root>, with no path (the SDK adds /v1/messages) ------------------


@pytest.mark.parametrize("suffix", ["/v1", "/v1/messages", "/anthropic", "/v1/v1"])
def test_anthropic_sdk_with_a_wrong_base_url(native_gw: GatewayProcess, native_key: str, native: NativeUpstream,
                                             suffix: str) -> None:
    root = native_gw.url
    wrong = anthropic.Anthropic(base_url=root + suffix, api_key=native_key, max_retries=0, timeout=20)
    calls: list[tuple[Callable[[], Any], str]] = [
        (lambda: wrong.messages.create(model="scripted-anthropic", max_tokens=10, messages=HELLO),
         f"POST {root}/v1/messages"),
        (lambda: wrong.messages.count_tokens(model="scripted-anthropic", messages=HELLO),
         f"POST {root}/v1/messages/count_tokens"),
        (lambda: list(wrong.models.list()), f"GET {root}/v1/models"),
    ]
    with nothing_charged(native_gw, native):
        for call, right_curl in calls:
            err = sdk_404(call, anthropic.NotFoundError)
            assert isinstance(err, anthropic.NotFoundError) and err.status_code == 404
            assert isinstance(err.body, dict) and err.body["error"]["type"] == "not_found_error"
            assert err.request_id == err.response.headers.get("x-tt-request-id")
            assert_advice(err.body["error"]["message"], err.response.headers.get("x-tt-request-id"), root, right_curl,
                          root + suffix)


# -- google-genai: base_url must be <root>, with no path (the SDK adds its own API version) ----------------


@pytest.mark.parametrize("suffix", ["/v1beta", "/v1", "/v1beta/models", "/v1/models"])
def test_google_genai_with_a_wrong_base_url(native_gw: GatewayProcess, native_key: str, native: NativeUpstream,
                                            suffix: str) -> None:
    """google-genai adds /v1/models/... (its default API version is v1), so base_url <root>/v1beta/models gives
    POST /v1beta/models/v1/models/scripted-gemini:generateContent: under the served prefix, with the model
    'v1/models/scripted-gemini', which was answered as an unknown model rather than a wrong URL."""
    root = native_gw.url
    wrong = genai.Client(api_key=native_key, http_options=gt.HttpOptions(base_url=root + suffix, timeout=20_000))
    calls: list[tuple[Callable[[], Any], str]] = [
        (lambda: wrong.models.generate_content(model="scripted-gemini", contents="hi"), f"POST {root}{GEMINI_CALL}"),
        (lambda: wrong.models.count_tokens(model="scripted-gemini", contents="hi"),
         f"POST {root}/v1beta/models/scripted-gemini:countTokens"),
        (lambda: list(wrong.models.list()), f"GET {root}/v1beta/models"),
        (lambda: wrong.models.get(model="scripted-gemini"), f"GET {root}/v1beta/models/scripted-gemini"),
    ]
    with nothing_charged(native_gw, native):
        for call, right_curl in calls:
            err = sdk_404(call, gerrors.ClientError)
            assert isinstance(err, gerrors.ClientError) and err.code == 404 and err.status == "NOT_FOUND"
            assert err.response is not None and err.message
            assert_advice(err.message, err.response.headers.get("x-tt-request-id"), root, right_curl, root + suffix)


# -- curl: the whole URL pasted, one segment off either way -------------------------------------------------

CURL_HEADERS = {  # what each API's own curl example sends
    "openai": {"Authorization": "Bearer {key}", "Content-Type": "application/json"},
    "anthropic": {"x-api-key": "{key}", "anthropic-version": "2023-06-01", "content-type": "application/json"},
    "gemini": {"x-goog-api-key": "{key}", "Content-Type": "application/json"},
}
CURL_CASES = [  # the wrong path, the right one, and the base URL each API's SDK should be given
    ("/messages", "/v1/messages", ""),
    ("/v1/v1/messages", "/v1/messages", ""),
    ("/chat/completions", "/v1/chat/completions", "/v1"),
    ("/v1/v1/chat/completions", "/v1/chat/completions", "/v1"),
    ("/v1beta/v1beta/models/scripted-gemini:generateContent", GEMINI_CALL, ""),
    ("/models/scripted-gemini:generateContent", GEMINI_CALL, ""),
    ("/v1/v1beta/models/scripted-gemini:generateContent", GEMINI_CALL, ""),
    ("/v1beta/models/v1beta/models/scripted-gemini:generateContent", GEMINI_CALL, ""),
]


def curl(method: str, url: str, headers: dict[str, str], body: Any = None) -> tuple[int, dict[str, str], Any]:
    """The request as a user pastes it into a shell: curl itself when installed, else the same request by urllib."""
    data = None if body is None else json.dumps(body)
    if shutil.which("curl"):
        args = ["curl", "-sS", "-i", "-X", method, url]
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        if data is not None:
            args += ["--data-raw", data]
        raw = subprocess.run(args, capture_output=True, timeout=20, check=True).stdout.decode()
        head, _, text = raw.partition("\r\n\r\n")
        status_line, *lines = head.split("\r\n")
        found = dict(line.split(": ", 1) for line in lines)
        return int(status_line.split()[1]), {k.lower(): v for k, v in found.items()}, json.loads(text)
    req = urllib.request.Request(url, None if data is None else data.encode(), headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, json.loads(err.read())


def assert_dialect(dialect: str, body: Any) -> str:
    """The error is in the shape of the API whose headers the request carried; its message."""
    if dialect == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "not_found_error", body
    elif dialect == "gemini":
        assert body["error"]["code"] == 404 and body["error"]["status"] == "NOT_FOUND", body
    else:
        assert body["error"]["code"] == "unknown_url", body
    return body["error"]["message"]


@pytest.mark.parametrize("dialect", sorted(CURL_HEADERS))
def test_curl_with_a_wrong_url(native_gw: GatewayProcess, native_key: str, native: NativeUpstream,
                               dialect: str) -> None:
    """The path names the API (whatever the headers say): the advice is that API's URL; the headers choose only the
    error's shape."""
    root = native_gw.url
    headers = {name: value.format(key=native_key) for name, value in CURL_HEADERS[dialect].items()}
    body = {"model": "scripted-openai", "max_tokens": 10, "messages": HELLO, "contents": [{"parts": [{"text": "hi"}]}]}
    with nothing_charged(native_gw, native):
        for wrong_path, right_path, sdk_path in CURL_CASES:
            status, answer_headers, answer = curl("POST", root + wrong_path, headers, body)
            assert status == 404, (wrong_path, answer)
            message = assert_dialect(dialect, answer)
            assert_advice(message, answer_headers.get("x-tt-request-id"), root + sdk_path, f"POST {root}{right_path}",
                          root + wrong_path)


def test_a_wrong_list_url_is_a_404_before_any_key_check(native_gw: GatewayProcess, native: NativeUpstream) -> None:
    """The model lists need a key (a 401 without one), but a wrong URL says how to fix the URL first."""
    root = native_gw.url
    for path in ("/v1/models", "/v1beta/models"):
        assert curl("GET", root + path, {})[0] == 401
    cases = [("/models", {}, "openai", f"{root}/v1", f"GET {root}/v1/models"),
             ("/v1/v1/models", {}, "openai", f"{root}/v1", f"GET {root}/v1/models"),
             ("/v1/v1/models", {"anthropic-version": "2023-06-01"}, "anthropic", root, f"GET {root}/v1/models"),
             ("/v1beta/v1beta/models", {}, "openai", root, f"GET {root}/v1beta/models"),
             ("/v1beta/v1/models", {"x-goog-api-client": "curl"}, "gemini", root, f"GET {root}/v1beta/models"),
             ("/v1beta/models/v1/models", {"x-goog-api-client": "curl"}, "gemini", root, f"GET {root}/v1beta/models")]
    with nothing_charged(native_gw, native):
        for path, headers, dialect, right_base, right_curl in cases:
            status, answer_headers, answer = curl("GET", root + path, headers)
            assert status == 404, (path, answer)
            assert_advice(assert_dialect(dialect, answer), answer_headers.get("x-tt-request-id"), right_base,
                          right_curl, root + path)
