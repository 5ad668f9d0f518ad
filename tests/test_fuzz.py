"""Fuzz: every endpoint of one running gateway (the demo provider, billing on, a funded key) gets
hypothesis-made hostile input: malformed JSON, wrong types in every known field, huge and deeply nested bodies,
invalid UTF-8, and odd headers (sent over a raw socket, so nothing cleans them up on the way). Whatever comes
in: no 5xx, no Python exception text in a body, every error in the caller's dialect, and a rejected request
leaves the wallet as it was. Derandomized, with a bounded number of examples per endpoint."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GatewayProcess, base_config, cli, demo_provider, serve_gateway, wait_for

ADMIN_TOKEN = "tt-admin-fuzz-token-0123456789"
EXAMPLES = int(os.environ.get("TT_FUZZ_EXAMPLES", "40"))
MAX_BODY = 262144
PY_ERROR_TEXT = ("Traceback", "File \"", "NoneType", "object has no attribute", "not subscriptable",
                 "unhashable type", "is not iterable", "KeyError", "TypeError", "ValueError", "AttributeError",
                 "IndexError", "RecursionError", "recursion depth", "UnicodeDecodeError", "codec can't",
                 "invalid literal for", "JSONDecodeError", "orjson", "ZeroDivision", "OverflowError",
                 "AssertionError", "sqlite3", "Exception")
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def fuzz_config(log_path: Path) -> str:
    return base_config(log_path, max_body_bytes=MAX_BODY) + demo_provider() + """
[models.demo-echo]
provider = "demo"
upstream_model = "echo"
max_output_tokens = 64
price = { input = "0.50", output = "1.50" }

[models.demo-embed]
provider = "demo"
upstream_model = "embed"
max_output_tokens = 1
price = { input = "0.02", output = "0" }

[models.demo-image]
provider = "demo"
upstream_model = "image"
max_output_tokens = 1
price = { input = "0", output = "0", image = { "1024x1024" = "0.02", "1024x1024/hd" = "0.04" } }

[models.demo-video]
provider = "demo"
upstream_model = "sora-2"
max_output_tokens = 1
price = { input = "0", output = "0", second = "0.10" }
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from serve_gateway(tmp_path_factory.mktemp("fuzz"), fuzz_config, {"TOKENTOLL_ADMIN_TOKEN": ADMIN_TOKEN},
                             "fuzz", "1000", ("Traceback",))


@pytest.fixture(scope="module")
def key(gw: GatewayProcess) -> str:
    return cli(gw.config, "keys", "create", "--account", "fuzz", env=gw.env)["key"]


@pytest.fixture(scope="module")
def books(gw: GatewayProcess) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(gw.config.parent / "tokentoll.db", timeout=10)
    yield db
    db.close()


# -- a raw HTTP/1.1 client: sends exactly the bytes it is given ------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str:
        return (self.headers.get(name) or [""])[0]


def raw_request(gw: GatewayProcess, method: str, target: str, headers: list[tuple[str, bytes | str]],
                body: bytes = b"", content_length: bool = True, timeout: float = 15) -> Reply | None:
    """One request on its own connection (Connection: close). None: the server closed without answering."""
    host, port = gw.url.removeprefix("http://").split(":")
    head = [f"{method} {target} HTTP/1.1".encode(), f"Host: {host}:{port}".encode(), b"Connection: close"]
    for name, value in headers:
        head.append(name.encode() + b": " + (value.encode() if isinstance(value, str) else value))
    if content_length:
        head.append(b"Content-Length: %d" % len(body))
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read the whole body: its answer may still be there
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except ConnectionResetError:
            pass
        except TimeoutError:  # a Content-Length that promised more than came: the server is still waiting
            if not chunks:
                return None
    raw = b"".join(chunks)
    if not raw:
        return None
    head_raw, _, rest = raw.partition(b"\r\n\r\n")
    lines = head_raw.split(b"\r\n")
    status = int(lines[0].split()[1])
    hdrs: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        hdrs.setdefault(name.strip().lower().decode(), []).append(value.strip().decode(errors="replace"))
    if "chunked" in ",".join(hdrs.get("transfer-encoding", [])):
        rest = _dechunk(rest)
    return Reply(status, hdrs, rest)


def _dechunk(data: bytes) -> bytes:
    out, i = [], 0
    while i < len(data):
        end = data.find(b"\r\n", i)
        if end < 0:
            break
        size = int(data[i:end].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(data[end + 2: end + 2 + size])
        i = end + 2 + size + 2
    return b"".join(out)


# -- the endpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str
    dialect: str  # openai, anthropic, gemini
    body: Any = None  # a valid JSON body to mutate (None: no body)
    auth: str = "bearer"  # bearer, x-api-key, goog, admin
    multipart: tuple[tuple[str, str | bytes], ...] = ()  # a valid multipart form instead of JSON


MSG = [{"role": "user", "content": "hello"}]
GCONTENTS = [{"role": "user", "parts": [{"text": "hello"}]}]
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360"
                    "f8cfc0f01f0005000201ab0b1d2b0000000049454e44ae426082")
TOOL = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {
    "type": "object", "properties": {"a": {"type": "string"}}}}}
ENDPOINTS = [
    Endpoint("chat", "POST", "/v1/chat/completions", "openai", {
        "model": "demo-echo", "messages": MSG, "max_tokens": 5, "stream": False, "temperature": 0.5, "top_p": 1,
        "n": 1, "stop": ["x"], "tools": [TOOL], "tool_choice": "auto", "response_format": {"type": "text"},
        "stream_options": {"include_usage": True}, "user": "u", "seed": 1, "logprobs": False,
        "reasoning_effort": "low", "max_completion_tokens": 5, "presence_penalty": 0}),
    Endpoint("chat-stream", "POST", "/v1/chat/completions", "openai", {
        "model": "demo-echo", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}),
    Endpoint("completions", "POST", "/v1/completions", "openai", {
        "model": "demo-echo", "prompt": "hello", "max_tokens": 5, "stream": False, "n": 1, "best_of": 1,
        "echo": False, "suffix": None, "logprobs": None}),
    Endpoint("embeddings", "POST", "/v1/embeddings", "openai", {
        "model": "demo-embed", "input": ["hello", "world"], "encoding_format": "float", "dimensions": 3,
        "user": "u"}),
    Endpoint("responses", "POST", "/v1/responses", "openai", {
        "model": "demo-echo", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "instructions": "be brief", "max_output_tokens": 16, "stream": False, "temperature": 1,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "text": {"format": {"type": "text"}}, "reasoning": {"effort": "low"}, "store": False}),
    Endpoint("messages", "POST", "/v1/messages", "anthropic", {
        "model": "demo-echo", "max_tokens": 5, "messages": MSG, "system": [{"type": "text", "text": "s"}],
        "stream": False, "temperature": 0.5, "top_k": 5, "stop_sequences": ["x"], "metadata": {"user_id": "u"},
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto"}, "thinking": {"type": "disabled"}}, "x-api-key"),
    Endpoint("messages-stream", "POST", "/v1/messages?beta=true", "anthropic", {
        "model": "demo-echo", "max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                          "data": "iVBORw0KGgo="}}]}],
        "stream": True}, "x-api-key"),
    Endpoint("count_tokens", "POST", "/v1/messages/count_tokens", "anthropic", {
        "model": "demo-echo", "messages": MSG, "system": "s", "tools": []}, "x-api-key"),
    Endpoint("generate", "POST", "/v1beta/models/demo-echo:generateContent", "gemini", {
        "contents": GCONTENTS, "systemInstruction": {"parts": [{"text": "s"}]},
        "generationConfig": {"maxOutputTokens": 5, "temperature": 0.5, "topK": 3, "stopSequences": ["x"],
                             "responseMimeType": "text/plain", "thinkingConfig": {"thinkingBudget": 0}},
        "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "OBJECT"}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}, "safetySettings": []}, "goog"),
    Endpoint("stream-sse", "POST", "/v1beta/models/demo-echo:streamGenerateContent?alt=sse", "gemini", {
        "contents": GCONTENTS, "generationConfig": {"maxOutputTokens": 5}}, "goog"),
    Endpoint("stream-array", "POST", "/v1/models/demo-echo:streamGenerateContent", "gemini", {
        "contents": GCONTENTS}, "goog"),
    Endpoint("count", "POST", "/v1beta/models/demo-echo:countTokens", "gemini", {
        "contents": GCONTENTS, "generateContentRequest": {"contents": GCONTENTS}}, "goog"),
    Endpoint("embed", "POST", "/v1beta/models/demo-embed:embedContent", "gemini", {
        "content": {"parts": [{"text": "hello"}]}, "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 3},
        "goog"),
    Endpoint("batch-embed", "POST", "/v1beta/models/demo-embed:batchEmbedContents", "gemini", {
        "requests": [{"model": "models/demo-embed", "content": {"parts": [{"text": "hello"}]}}]}, "goog"),
    Endpoint("images", "POST", "/v1/images/generations", "openai", {
        "model": "demo-image", "prompt": "a cat", "n": 1, "size": "1024x1024", "quality": "hd",
        "response_format": "b64_json"}),
    Endpoint("image-edits", "POST", "/v1/images/edits", "openai", multipart=(
        ("model", "demo-image"), ("prompt", "a hat"), ("n", "1"), ("size", "1024x1024"), ("image", PNG))),
    Endpoint("video-json", "POST", "/v1/videos", "openai", {
        "model": "demo-video", "prompt": "a wave", "seconds": "4", "size": "1280x720"}),
    Endpoint("video-form", "POST", "/v1/videos", "openai", multipart=(
        ("model", "demo-video"), ("prompt", "a wave"), ("seconds", "4"), ("input_reference", PNG))),
]
GET_ENDPOINTS = [  # paths with a fuzzed segment: {x}
    ("GET", "/v1/videos/{x}"), ("GET", "/v1/videos/{x}/content"), ("DELETE", "/v1/videos/{x}"),
    ("POST", "/v1/videos/{x}/cancel"), ("GET", "/v1/videos?limit={x}"), ("GET", "/v1/models/{x}"),
    ("GET", "/v1beta/models/{x}"), ("GET", "/v1/models"), ("GET", "/v1beta/models"), ("GET", "/v1/pricing"),
]
ADMIN = [("GET", "/admin/accounts"), ("POST", "/admin/accounts"), ("GET", "/admin/keys"), ("POST", "/admin/keys"),
         ("POST", "/admin/keys/1/rotate"), ("POST", "/admin/keys/1/disable"), ("PATCH", "/admin/keys/1"),
         ("GET", "/admin/wallets/fuzz"), ("GET", "/admin/wallets/fuzz/history?limit=5"),
         ("POST", "/admin/wallets/fuzz/credit"), ("POST", "/admin/wallets/fuzz/adjust"), ("GET", "/admin/usage"),
         ("GET", "/admin/usage/req_1"), ("GET", "/admin/holds")]


def auth_headers(ep_auth: str, key: str) -> list[tuple[str, str]]:
    if ep_auth == "x-api-key":
        return [("x-api-key", key), ("anthropic-version", "2023-06-01")]
    if ep_auth == "goog":
        return [("x-goog-api-key", key)]
    return [("Authorization", f"Bearer {key}")]


def multipart(fields: list[tuple[str, str | bytes]], boundary: str = "fuzzboundary") -> tuple[bytes, str]:
    out = []
    for name, value in fields:
        if isinstance(value, bytes):
            out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                       f"Content-Type: image/png\r\n\r\n".encode() + value + b"\r\n")
        else:
            out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


# -- the strategies -------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63 - 2, max_value=2**70)
           | st.integers(min_value=-(2**70), max_value=-1) | st.floats() | st.text(max_size=20)
           | st.sampled_from(["", "\x00", "demo-echo", "-1", "1e309", "NaN", "models/demo-echo", "\ud800"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def paths_of(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every field path in a JSON value: ("messages", 0, "content"), ..."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths_of(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths_of(v, prefix + (i,))
    return out


def replaced(obj: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    copy: Any = dict(obj) if isinstance(obj, dict) else list(obj)
    if len(path) == 1 and delete:
        del copy[path[0]]
        return copy
    copy[path[0]] = replaced(copy[path[0]], path[1:], value, delete)
    return copy


def deep(depth: int, kind: str) -> str:
    return ('{"a":' * depth + "1" + "}" * depth) if kind == "object" else ("[" * depth + "]" * depth)


def dumps(obj: Any) -> bytes:
    """JSON as Python writes it: NaN, Infinity and lone surrogates included (bytes that are not UTF-8)."""
    return json.dumps(obj).encode("utf-8", "surrogatepass") if _has_surrogate(obj) else \
        json.dumps(obj, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


def _has_surrogate(obj: Any) -> bool:
    return "\\ud8" in json.dumps(obj) or "\\udb" in json.dumps(obj) or "\\udc" in json.dumps(obj) or \
        "\\udf" in json.dumps(obj)


@st.composite
def json_bodies(draw: st.DrawFn, base: Any) -> bytes:
    """A body for a JSON endpoint: the valid one with a field replaced, deleted or added; or garbage."""
    kind = draw(st.sampled_from(["field", "field", "field", "delete", "extra", "top", "bytes", "truncated",
                                 "bad-utf8", "deep", "deep-field", "huge", "wide"]))
    paths = paths_of(base)
    if kind == "field":
        return dumps(replaced(base, draw(st.sampled_from(paths)), draw(values)))
    if kind == "delete":
        return dumps(replaced(base, draw(st.sampled_from(paths)), None, delete=True))
    if kind == "extra":
        return dumps({**base, draw(st.text(max_size=12)): draw(values)})
    if kind == "top":
        return dumps(draw(values))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    valid = dumps(base)
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "bad-utf8":
        at = valid.index(b'"', draw(st.integers(0, len(valid) // 2))) + 1
        return valid[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xf4\x90\x80\x80"]))\
            + valid[at:]
    if kind == "deep":
        return deep(draw(st.sampled_from([500, 1100, 10_000])), draw(st.sampled_from(["object", "array"]))).encode()
    if kind == "deep-field":
        path = draw(st.sampled_from(paths))
        marker = "__DEEP__"
        text = dumps(replaced(base, path, marker)).replace(f'"{marker}"'.encode(), deep(
            draw(st.sampled_from([200, 900, 1100, 10_000])), draw(st.sampled_from(["object", "array"]))).encode())
        return text
    if kind == "huge":  # over the limit, or just under it in one field
        size = draw(st.sampled_from([MAX_BODY + 1, MAX_BODY - 1000, 100_000]))
        path = draw(st.sampled_from(paths))
        return dumps(replaced(base, path, "x " * (size // 2)))
    return dumps(replaced(base, draw(st.sampled_from(paths)), list(range(draw(st.sampled_from([1000, 20_000]))))))


@st.composite
def odd_headers(draw: st.DrawFn, ep: Endpoint, key: str, body_len: int) -> tuple[list[tuple[str, bytes | str]], bool]:
    """(headers, whether to add the true Content-Length)."""
    kind = draw(st.sampled_from(["normal", "normal", "normal", "dup-auth", "bad-key", "no-auth", "big-length",
                                 "neg-length", "text-length", "short-length", "content-type", "nul", "both-keys"]))
    hdrs: list[tuple[str, bytes | str]] = [*auth_headers(ep.auth, key)]
    ctype = "application/json"
    add_length = True
    if kind == "dup-auth":
        hdrs += [("Authorization", "Bearer sk-tt-not-a-real-key"), ("Authorization", f"Bearer {key}")]
    elif kind == "bad-key":
        hdrs = [(n, v.replace(key, draw(st.sampled_from(["", "sk-tt-", "x" * 500, "sk-tt-\u00e9"]))))
                for n, v in hdrs]  # type: ignore[union-attr]
    elif kind == "no-auth":
        hdrs = [h for h in hdrs if h[0] == "anthropic-version"]
    elif kind == "both-keys":
        hdrs += [("x-api-key", "sk-tt-wrong"), ("x-goog-api-key", "sk-tt-wrong")]
    elif kind == "big-length":
        hdrs.append(("Content-Length", draw(st.sampled_from(["99999999999999999999999", str(MAX_BODY * 4)]))))
        add_length = False
    elif kind == "neg-length":
        hdrs.append(("Content-Length", "-1"))
        add_length = False
    elif kind == "text-length":
        hdrs.append(("Content-Length", draw(st.sampled_from(["abc", "1e3", " 12", "0x10", "١٢"]))))
        add_length = False
    elif kind == "short-length":  # fewer bytes than the body: the rest is a (bad) next request
        hdrs.append(("Content-Length", str(max(body_len // 2, 0))))
        add_length = False
    elif kind == "content-type":
        ctype = draw(st.sampled_from(["text/plain", "multipart/form-data; boundary=zz", "multipart/form-data",
                                      "application/x-www-form-urlencoded", "application/json; charset=latin-1",
                                      "image/png", ""]))
    elif kind == "nul":
        hdrs.append(("X-Fuzz", b"a\x00b"))
        hdrs.append(("anthropic-beta", b"\x00"))
    hdrs.append(("Content-Type", ctype))
    return hdrs, add_length


# -- the checks --------------------------------------------------------------------------------------


def wallet(db: sqlite3.Connection) -> tuple[int, int]:
    return db.execute("SELECT balance, held FROM accounts WHERE name = 'fuzz'").fetchone()


def settled_wallet(db: sqlite3.Connection) -> tuple[int, int] | None:
    """The wallet once every earlier request has settled (None while a video task may still move it)."""
    if db.execute("SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'in_progress')").fetchone()[0]:
        return None
    wait_for(lambda: db.execute("SELECT COUNT(*) FROM holds WHERE status = 'open'").fetchone()[0] == 0, 5,
             "the earlier requests settled")
    return wallet(db)


def assert_not_crashed(reply: Reply, what: str) -> None:
    """No 5xx, and none of Python's error text in the body."""
    assert reply.status < 500, f"{what}: {reply.status} {reply.body[:500]!r}"
    text = reply.body.decode(errors="replace")
    leaked = [word for word in PY_ERROR_TEXT if word in text]
    assert not leaked, f"{what}: Python error text {leaked} in {reply.status} {reply.body[:500]!r}"


def check_reply(reply: Reply | None, dialect: str, what: str, db: sqlite3.Connection,
                before: tuple[int, int] | None) -> None:
    if reply is None:
        return  # the server closed the connection without a word: allowed for broken HTTP
    assert_not_crashed(reply, what)
    if reply.status < 400:
        return
    if not reply.header("x-tt-request-id"):
        return  # refused by the HTTP server itself (hypercorn's 400 for broken HTTP): never reached the gateway
    try:
        body = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        raise AssertionError(f"{what}: error body is not JSON: {reply.status} {reply.body[:300]!r}") from None
    assert_dialect(body, dialect, reply.status, what)
    if before is not None:  # a rejected request leaves the wallet as it was (its hold, if any, released)
        wait_for(lambda: wallet(db) == before, 5, f"{what}: the wallet back at {before} (is {wallet(db)})")


def assert_dialect(body: Any, dialect: str, status: int, what: str) -> None:
    shown = orjson.dumps(body)[:300]
    if dialect == "anthropic":
        ok = (isinstance(body, dict) and body.get("type") == "error" and isinstance(body.get("error"), dict)
              and isinstance(body["error"].get("type"), str) and isinstance(body["error"].get("message"), str))
    elif dialect == "gemini":
        err = body.get("error") if isinstance(body, dict) else None
        ok = (isinstance(err, dict) and err.get("code") == status and isinstance(err.get("message"), str)
              and isinstance(err.get("status"), str))
    else:
        err = body.get("error") if isinstance(body, dict) else None
        ok = (isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)
              and "code" in err and "param" in err and "status" not in err)
    assert ok, f"{what}: {status} not in the {dialect} error shape: {shown!r}"


def send(gw: GatewayProcess, db: sqlite3.Connection, ep: Endpoint, body: bytes,
         headers: list[tuple[str, bytes | str]], add_length: bool) -> Reply | None:
    before = settled_wallet(db)
    what = f"{ep.method} {ep.path} body={body[:150]!r}... headers={headers!r}"
    reply = raw_request(gw, ep.method, ep.path, headers, body, add_length, timeout=2 if not add_length else 15)
    if reply is not None and reply.status < 400:
        before = None  # accepted: it may cost money
    check_reply(reply, ep.dialect, what, db, before)
    return reply


# -- the tests --------------------------------------------------------------------------------------

JSON_ENDPOINTS = [ep for ep in ENDPOINTS if ep.body is not None]
FORM_ENDPOINTS = [ep for ep in ENDPOINTS if ep.multipart]


@pytest.mark.parametrize("ep", JSON_ENDPOINTS, ids=lambda ep: ep.name)
def test_json_endpoints_survive_bad_bodies(gw: GatewayProcess, key: str, books: sqlite3.Connection,
                                           ep: Endpoint) -> None:
    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        body = data.draw(json_bodies(ep.body))
        headers, add_length = data.draw(odd_headers(ep, key, len(body)))
        send(gw, books, ep, body, headers, add_length)

    run()


WRONG_TYPES = (None, True, -1, 2**64, 0.5, "x", [], {}, [{}], {"": [None]})


@pytest.mark.parametrize("ep", JSON_ENDPOINTS, ids=lambda ep: ep.name)
def test_wrong_type_in_every_known_field(gw: GatewayProcess, key: str, books: sqlite3.Connection,
                                         ep: Endpoint) -> None:
    """Not left to chance: each field of the endpoint's valid body, in turn, holds each wrong type."""
    headers: list[tuple[str, bytes | str]] = [*auth_headers(ep.auth, key), ("Content-Type", "application/json")]
    for path in paths_of(ep.body):
        for value in WRONG_TYPES:
            send(gw, books, ep, dumps(replaced(ep.body, path, value)), headers, True)


form_values = st.one_of(st.text(max_size=30), st.binary(max_size=50), st.sampled_from(
    ["-1", "0", "99999999999999999999", "1.5", "", "\x00", "1024x1024", "hd", "4", "nan", "demo-echo"]))


@pytest.mark.parametrize("ep", FORM_ENDPOINTS, ids=lambda ep: ep.name)
def test_multipart_endpoints_survive_bad_forms(gw: GatewayProcess, key: str, books: sqlite3.Connection,
                                               ep: Endpoint) -> None:
    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        fields = list(ep.multipart)
        kind = data.draw(st.sampled_from(["value", "value", "drop", "dup", "extra", "mangle", "json-lie"]))
        if kind == "value":
            i = data.draw(st.integers(0, len(fields) - 1))
            fields[i] = (fields[i][0], data.draw(form_values))
        elif kind == "drop":
            del fields[data.draw(st.integers(0, len(fields) - 1))]
        elif kind == "dup":
            fields.append(fields[data.draw(st.integers(0, len(fields) - 1))])
        elif kind == "extra":
            fields.append((data.draw(st.text(max_size=10)).replace('"', ""), data.draw(form_values)))
        body, ctype = multipart(fields)
        if kind == "mangle":  # the form itself broken: cut, a boundary missing, junk in the framing
            cut = data.draw(st.integers(0, len(body)))
            body = data.draw(st.sampled_from([body[:cut], body.replace(b"--fuzzboundary--", b""),
                                              body[:cut] + data.draw(st.binary(max_size=40)) + body[cut:]]))
        if kind == "json-lie":
            ctype = "application/json"
        headers, add_length = data.draw(odd_headers(ep, key, len(body)))
        headers = [(n, ctype if n == "Content-Type" and v == "application/json" else v) for n, v in headers]
        send(gw, books, ep, body, headers, add_length)

    run()


segments = st.one_of(st.text(max_size=40), st.sampled_from(
    ["", "video_123", "..%2F..%2Fetc", "%00", "%FF%FE", "a" * 3000, "models%2Fdemo-echo", "demo-echo",
     "demo-echo:generateContent", "%", "%zz", "-1", "99999999999999999999"]))


@FUZZ
@given(data=st.data())
def test_path_and_query_endpoints(gw: GatewayProcess, key: str, books: sqlite3.Connection, data: st.DataObject) -> None:
    method, template = data.draw(st.sampled_from(GET_ENDPOINTS))
    segment = data.draw(segments)
    quoted = "".join(c if c.isascii() and c.isprintable() and c not in " #?" else
                     "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in segment)
    target = template.replace("{x}", quoted)
    dialect = data.draw(st.sampled_from(["openai", "anthropic", "gemini"]))
    headers: list[tuple[str, bytes | str]] = [("Authorization", f"Bearer {key}")]
    if dialect == "anthropic":
        headers.append(("anthropic-version", "2023-06-01"))
    elif dialect == "gemini":
        headers.append(("x-goog-api-key", key))
    if target.startswith("/v1beta/"):
        dialect = "gemini"
    elif not target.startswith("/v1/models"):
        dialect = "openai"
    ep = Endpoint("path", method, target, dialect)
    send(gw, books, ep, data.draw(st.sampled_from([b"", b"{", b"[]"])), headers, True)


@FUZZ
@given(data=st.data())
def test_admin_routes_refuse_a_wrong_token(gw: GatewayProcess, books: sqlite3.Connection, data: st.DataObject) -> None:
    method, path = data.draw(st.sampled_from(ADMIN))
    token = data.draw(st.sampled_from(["", "Bearer ", "Bearer wrong", "bearer " + ADMIN_TOKEN[:-1], ADMIN_TOKEN,
                                       "Basic " + ADMIN_TOKEN, "Bearer " + ADMIN_TOKEN + "x", "Bearer \u00e9"]))
    headers: list[tuple[str, bytes | str]] = [("Authorization", token)] if token else []
    body = data.draw(st.one_of(st.just(b""), st.binary(max_size=50), values.map(dumps)))
    reply = send(gw, books, Endpoint("admin", method, path, "openai"), body, headers, True)
    assert reply is not None and reply.status == 401, reply


# -- the console: form bodies, paths and queries, with a real session and CSRF token ---------------
# (each form from a valid filling, as the operator too, and the console's cookies: tests/security/test_console_inputs.py)

CONSOLE_FIELDS = ["csrf_token", "email", "password", "password2", "current", "next", "name", "monthly_limit",
                  "models", "rpm", "tpm", "expires_at", "chain", "amount", "note", "request_id"]
CONSOLE_POSTS = ["/console/login", "/console/signup", "/console/password", "/console/keys", "/console/keys/{k}",
                 "/console/keys/{k}/rotate", "/console/keys/{k}/disable", "/console/keys/{k}/enable",
                 "/console/recharge/orders", "/console/admin/accounts/1/adjust", "/console/admin/accounts/1/credit",
                 "/console/admin/deposits/1/credit", "/console/logout"]
CONSOLE_GETS = ["/console/usage?{q}", "/console/usage.csv?{q}", "/console/usage/{x}", "/console/recharge/orders/{x}",
                "/console/recharge/orders/{x}/status", "/console/keys?{q}", "/console/login?next={x}",
                "/console/admin/accounts/{x}", "/console/{x}", "/console/static/{x}", "/console/dashboard?{q}"]
USAGE_QUERY = ["key", "model", "from", "to", "status", "source", "offset", "request_id"]


@pytest.fixture(scope="module")
def console(gw: GatewayProcess) -> Any:
    """A logged-in console visitor with one API key of its own (its id is what {k} becomes)."""
    from tests.console_client import ConsoleClient

    visitor = ConsoleClient(gw.url)
    visitor.sign_up("fuzzer@example.com")
    made = visitor.post("/console/keys", {"name": "fuzzed"}, headers={"Accept": "application/json"}).json()
    visitor.key_id = made["id"]
    return visitor


console_values = st.one_of(st.text(max_size=60), st.sampled_from(
    ["", " ", "0", "-1", "1e999", "99999999999999999999999", "NaN", "none", "2020-02-30", "\x00", "%", "&=&",
     "a" * 5000, "demo-echo", "local", "<script>x</script>", "req_1", "x@example.com", "2099-12-31"]))


def check_console(reply: Reply | None, what: str, db: sqlite3.Connection, before: tuple[int, int] | None) -> None:
    """A console answer: never a 5xx nor Python's error text; the fuzz account's wallet as it was."""
    if reply is None:
        return
    assert_not_crashed(reply, what)
    if before is not None:
        assert wallet(db) == before, what


def console_headers(console: Any, ctype: str) -> list[tuple[str, bytes | str]]:
    cookies = "; ".join(f"{c.name}={c.value}" for c in console.http.cookies)
    return [("Cookie", cookies), ("Content-Type", ctype)]


@FUZZ
@given(data=st.data())
def test_console_forms_survive_bad_bodies(gw: GatewayProcess, console: Any, books: sqlite3.Connection,
                                          data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(CONSOLE_POSTS)).replace("{k}", str(console.key_id))
    if path == "/console/logout":
        path = "/console/password"  # (a log-out would end the session the other examples use)
    fields = data.draw(st.dictionaries(st.sampled_from(CONSOLE_FIELDS) | st.text(max_size=10), console_values,
                                       max_size=8))
    if data.draw(st.booleans()):
        fields["csrf_token"] = console.csrf  # most reach the handler; the rest meet the CSRF check
    kind = data.draw(st.sampled_from(["form", "form", "raw", "json"]))
    if kind == "form":
        body = "&".join(f"{urllib.parse.quote(k)}={urllib.parse.quote(v)}" for k, v in fields.items()).encode()
        ctype = "application/x-www-form-urlencoded"
    elif kind == "raw":
        body, ctype = data.draw(st.binary(max_size=300)), "application/x-www-form-urlencoded"
    else:
        body, ctype = orjson.dumps(fields), "application/json"
    before = wallet(books)
    reply = raw_request(gw, "POST", path, console_headers(console, ctype), body)
    check_console(reply, f"POST {path} {body[:150]!r}", books, before)


@FUZZ
@given(data=st.data())
def test_console_paths_and_queries(gw: GatewayProcess, console: Any, books: sqlite3.Connection,
                                   data: st.DataObject) -> None:
    template = data.draw(st.sampled_from(CONSOLE_GETS))
    segment = urllib.parse.quote(data.draw(segments), safe="%")
    query = urllib.parse.urlencode({k: data.draw(st.text(max_size=30)) for k in
                                    data.draw(st.lists(st.sampled_from(USAGE_QUERY), max_size=4))})
    target = template.replace("{x}", segment).replace("{q}", query)
    before = wallet(books)
    reply = raw_request(gw, "GET", target, console_headers(console, ""))
    check_console(reply, f"GET {target}", books, before)


# -- regressions: what the fuzzing found ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1beta/models/demo-echo:generateContent",
                                  "/v1beta/models/demo-echo:streamGenerateContent?alt=sse",
                                  "/v1/models/demo-echo:streamGenerateContent"])
def test_gemini_turns_without_parts_are_a_400_not_a_500(gw: GatewayProcess, key: str, books: sqlite3.Connection,
                                                          path: str) -> None:
    """Every turn's parts empty used to reach the (OpenAI-format) upstream as an empty message list: the demo
    provider raised, and the client got a 500."""
    ep = Endpoint("regression", "POST", path, "gemini", auth="goog")
    for contents in ([{"role": "user", "parts": []}], [{"parts": []}, {"role": "model", "parts": []}]):
        reply = send(gw, books, ep, orjson.dumps({"contents": contents}),
                     [*auth_headers("goog", key), ("Content-Type", "application/json")], True)
        assert reply is not None and reply.status == 400, reply
        assert orjson.loads(reply.body)["error"]["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages_all_empty_are_a_400_not_a_500(gw: GatewayProcess, key: str, books: sqlite3.Connection,
                                                           stream: bool) -> None:
    """The same through the Messages API: content [] in every message."""
    ep = Endpoint("regression", "POST", "/v1/messages", "anthropic", auth="x-api-key")
    body = {"model": "demo-echo", "max_tokens": 5, "messages": [{"role": "user", "content": []}], "stream": stream}
    reply = send(gw, books, ep, orjson.dumps(body),
                 [*auth_headers("x-api-key", key), ("Content-Type", "application/json")], True)
    assert reply is not None and reply.status == 400, reply
    assert orjson.loads(reply.body)["error"]["type"] == "invalid_request_error"


DEEP_PATHS = {"chat": ("messages", 0), "chat-stream": ("messages", 0, "content"), "responses": ("input", 0),
              "messages-stream": ("messages", 0, "content", 1, "source"), "count_tokens": ("tools",),
              "generate": ("tools", 0, "functionDeclarations", 0, "parameters")}


@pytest.mark.parametrize("name", list(DEEP_PATHS))
@pytest.mark.parametrize("depth", [250, 300, 1000])
def test_a_body_nested_deeper_than_the_gateway_can_write_is_a_400(gw: GatewayProcess, key: str,
                                                                  books: sqlite3.Connection, name: str,
                                                                  depth: int) -> None:
    """orjson reads 1024 levels but writes 254: a body nested in between was read, then failed where the
    gateway writes it again (the upstream body, the prompt estimate): a 500 with a traceback."""
    ep = next(e for e in JSON_ENDPOINTS if e.name == name)
    body = dumps(replaced(ep.body, DEEP_PATHS[name], "__DEEP__")).replace(b'"__DEEP__"', deep(depth, "object").encode())
    headers: list[tuple[str, bytes | str]] = [*auth_headers(ep.auth, key), ("Content-Type", "application/json")]
    reply = send(gw, books, ep, body, headers, True)
    assert reply is not None and reply.status == 400, reply


def test_the_demo_provider_refuses_like_an_upstream() -> None:
    """A request the demo provider cannot answer is its 400 (as a real upstream's), never an exception."""
    import asyncio

    from core import demo
    from core.config import Provider, Timeouts

    provider = Provider("demo", "openai", "", "", Timeouts(), "demo", 0.0)
    reply = asyncio.run(demo.answer(provider, "/chat/completions", b'{"model": "echo", "messages": []}', True))
    assert reply.status == 400
    assert orjson.loads(asyncio.run(reply.read()))["error"]["param"] == "messages"


def test_the_books_add_up_afterwards(gw: GatewayProcess, books: sqlite3.Connection) -> None:
    """After all that: every hold of a finished request closed, and the ledger equals the wallet."""
    wait_for(lambda: books.execute("SELECT COUNT(*) FROM holds WHERE status = 'open' AND kind = 'request'")
             .fetchone()[0] == 0, 10, "every request's hold closed")
    balance, held = wallet(books)
    ledger = books.execute("SELECT SUM(balance_delta), SUM(held_delta) FROM ledger l JOIN accounts a "
                           "ON a.id = l.account_id WHERE a.name = 'fuzz'").fetchone()
    assert (balance, held) == ledger and balance >= 0
    gw._drain.join(0.1)
    assert not [line for line in gw.stderr_lines if "Traceback" in line], "".join(gw.stderr_lines)
