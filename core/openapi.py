"""The OpenAPI 3.1 description of the gateway's own HTTP API (GET /openapi.json), built once at start-up. The relayed
LLM routes are listed with their auth and error shapes; their bodies are the providers' own, linked by externalDocs."""

from __future__ import annotations

from typing import Any

import orjson

from core.admin import NOTE_MAX
from core.balance_api import BALANCE_PATH, SUBSCRIPTION_PATHS, USAGE_PATHS
from core.dialects import GEMINI_METHODS, GEMINI_PREFIXES

OPENAI_DOCS = "https://platform.openai.com/docs/api-reference"
ANTHROPIC_DOCS = "https://docs.anthropic.com/en/api"
GEMINI_DOCS = "https://ai.google.dev/api"
API_VERSION = "0.1.0"  # pyproject.toml's version (tests/test_openapi.py holds them together)
STATUS_TEXT = {400: "Bad request", 401: "Missing, unknown, disabled or expired key", 402: "Payment required: the "
               "wallet or the key's monthly limit cannot cover the hold", 403: "Not allowed for this key",
               404: "Not found", 405: "Method not allowed", 408: "The request body did not arrive in time",
               413: "The request body is too large", 429: "Rate limited", 501: "Not served with billing off",
               502: "The upstream failed", 503: "Overloaded or shutting down", 504: "The upstream timed out"}
RELAY_STATUSES = (400, 401, 402, 403, 404, 408, 413, 429, 502, 503, 504)
USD = {"type": "string", "pattern": r"^-?\d+\.\d{9}$", "description": "US dollars, exact, with nine decimals"}
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def errors(schema: str, statuses: tuple[int, ...]) -> dict[str, Any]:
    """Error answers in one dialect's shape (components/responses holds each once)."""
    return {str(s): {"$ref": f"#/components/responses/{schema}{s}"} for s in statuses}


def error_responses() -> dict[str, Any]:
    return {f"{schema}{s}": {"description": text, "content": json_content(ref(schema))}
            for schema in ("OpenAIError", "AnthropicError", "GeminiError") for s, text in STATUS_TEXT.items()}


def ok(description: str, schema: Schema | None = None, status: int = 200) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = json_content(schema)
    return {str(status): answer}


def param(name: str, where: str, description: str, schema: Schema | None = None,
          required: bool | None = None) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path" if required is None else required,
            "description": description, "schema": schema or {"type": "string"}}


def op(summary: str, tag: str, responses: dict[str, Any], security: list[dict[str, list[str]]] | None = None,
       parameters: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
       docs: str | None = None, description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses,
                           "security": security if security is not None else []}
    for name, value in (("description", description), ("parameters", parameters), ("requestBody", body)):
        if value:
            out[name] = value
    if docs:
        out["externalDocs"] = {"description": "the provider's own API reference for the body", "url": docs}
    return out


def json_body(schema: Schema, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": json_content(schema)}


def fields(props: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


KEY = [{"bearerKey": []}, {"anthropicKey": []}, {"googleKey": []}]
GEMINI_KEY = [*KEY, {"googleQueryKey": []}]
ADMIN = [{"adminToken": []}]
ANY_OBJECT: Schema = {"type": "object"}
LIST_OF_ANY: Schema = {"type": "array", "items": ANY_OBJECT}


# -- the relay: bodies are the providers', shapes here are the gateway's --------------------------------------------


def relay_paths() -> dict[str, Any]:
    def openai(summary: str, docs: str, stream: bool = True) -> dict[str, Any]:
        content: dict[str, Any] = json_content(ANY_OBJECT)
        if stream:
            content["text/event-stream"] = {"schema": {"type": "string"}}
        return {"post": op(summary, "relay", {"200": {"description": "The answer (a stream with \"stream\": true)",
                                                      "content": content}, **errors("OpenAIError", RELAY_STATUSES)},
                           KEY, body=json_body(ANY_OBJECT), docs=docs)}

    def anthropic(summary: str, docs: str) -> dict[str, Any]:
        beta = param("beta", "query", "accepted as the Anthropic SDK sends it (`?beta=true`)", required=False)
        return {"post": op(summary, "relay", {"200": {"description": "The answer (a stream with \"stream\": true)",
                                                      "content": {**json_content(ANY_OBJECT), "text/event-stream":
                                                                  {"schema": {"type": "string"}}}},
                                              **errors("AnthropicError", RELAY_STATUSES)},
                           KEY, [beta], json_body(ANY_OBJECT), docs)}

    paths = {
        "/v1/chat/completions": openai("Chat Completions", f"{OPENAI_DOCS}/chat/create"),
        "/v1/completions": openai("Completions (legacy)", f"{OPENAI_DOCS}/completions/create"),
        "/v1/embeddings": openai("Embeddings", f"{OPENAI_DOCS}/embeddings/create", stream=False),
        "/v1/responses": openai("Responses", f"{OPENAI_DOCS}/responses/create"),
        "/v1/messages": anthropic("Anthropic Messages", f"{ANTHROPIC_DOCS}/messages"),
        "/v1/messages/count_tokens": anthropic("Anthropic token counting (not billed)",
                                               f"{ANTHROPIC_DOCS}/messages-count-tokens"),
    }
    model = param("model", "path", "the model's name (a name holding '/' is sent as %2F); `models/` before it is "
                                   "accepted")
    alt = param("alt", "query", "streamGenerateContent: `sse` for `data:` lines, else one JSON array",
                {"type": "string", "enum": ["sse"]}, required=False)
    docs = {"generate": f"{GEMINI_DOCS}/generate-content", "count": f"{GEMINI_DOCS}/tokens",
            "embed": f"{GEMINI_DOCS}/embeddings", "batch_embed": f"{GEMINI_DOCS}/embeddings"}
    for prefix in GEMINI_PREFIXES:
        for method, endpoint in GEMINI_METHODS.items():
            stream = method == "streamGenerateContent"
            content = {**json_content(ANY_OBJECT), **({"text/event-stream": {"schema": {"type": "string"}}}
                                                      if stream else {})}
            paths[f"{prefix}{{model}}:{method}"] = {"post": op(
                f"Gemini {method}" + (" (google-genai's v1 path)" if prefix.startswith("/v1/") else ""), "relay",
                {"200": {"description": "The answer", "content": content}, **errors("GeminiError", RELAY_STATUSES)},
                GEMINI_KEY, [model, alt] if stream else [model], json_body(ANY_OBJECT), docs[endpoint])}
    return paths


def media_paths() -> dict[str, Any]:
    video_id = param("video_id", "path", "the video's id (`video_...`), as POST /v1/videos gave it")
    video_errors = errors("OpenAIError", (400, 401, 402, 403, 404, 405, 429, 501, 502, 504))
    video = {"200": {"description": "An OpenAI video object", "content": json_content(ANY_OBJECT)}}
    tasks_note = "Video tasks need billing on (a 501 `tasks_need_billing` otherwise)."
    return {
        "/v1/images/generations": {"post": op(
            "Images: generate (billed per image returned)", "media",
            {**ok("The images", ANY_OBJECT), **errors("OpenAIError", RELAY_STATUSES)}, KEY,
            body=json_body(ANY_OBJECT), docs=f"{OPENAI_DOCS}/images/create")},
        "/v1/images/edits": {"post": op(
            "Images: edit (billed per image returned)", "media",
            {**ok("The images", ANY_OBJECT), **errors("OpenAIError", RELAY_STATUSES)}, KEY,
            body={"required": True, "content": {"multipart/form-data": {"schema": ANY_OBJECT}}},
            docs=f"{OPENAI_DOCS}/images/createEdit")},
        "/v1/videos": {
            "post": op("Videos: create a task (held now, charged on completion)", "media",
                       {**video, **video_errors}, KEY, body={"required": True, "content": {
                           "application/json": {"schema": ANY_OBJECT},
                           "multipart/form-data": {"schema": ANY_OBJECT}}},
                       docs=f"{OPENAI_DOCS}/videos/create", description=tasks_note),
            "get": op("Videos: the key's own tasks (a key restricted to models sees those models' only)", "media",
                      {"200": {"description": "A page of video objects", "content": json_content(ANY_OBJECT)},
                       **video_errors}, KEY,
                      [param("after", "query", "the id to list after", required=False),
                       param("limit", "query", "1 to 100 (20)", {"type": "integer", "minimum": 1, "maximum": 100},
                             required=False),
                       param("order", "query", "by creation", {"type": "string", "enum": ["asc", "desc"]},
                             required=False)], docs=f"{OPENAI_DOCS}/videos/list")},
        "/v1/videos/{video_id}": {
            "get": op("Videos: one task", "media", {**video, **video_errors}, KEY, [video_id],
                      docs=f"{OPENAI_DOCS}/videos/retrieve"),
            "delete": op("Videos: delete a task (an open one is cancelled first, its hold released)", "media",
                         {**video, **video_errors}, KEY, [video_id], docs=f"{OPENAI_DOCS}/videos/delete")},
        "/v1/videos/{video_id}/content": {"get": op(
            "Videos: the finished video, thumbnail or spritesheet", "media",
            {"200": {"description": "The bytes", "content": {"application/octet-stream": {
                "schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}}, **video_errors},
            KEY, [video_id, param("variant", "query", "which asset", {"type": "string", "enum": [
                "video", "thumbnail", "spritesheet"]}, required=False)], docs=f"{OPENAI_DOCS}/videos/content")},
        "/v1/videos/{video_id}/cancel": {"post": op(
            "Videos: cancel an open task (a completed one is a 400 `video_already_completed`)", "media",
            {**video, **video_errors}, KEY, [video_id])},
    }


# -- the gateway's own routes -----------------------------------------------------------------------------------------


def public_paths() -> dict[str, Any]:
    model_id = param("model_id", "path", "the model's name (a name holding '/' is sent as %2F)")
    gemini_model = param("model_id", "path", "the model's name, with or without `models/` before it")
    listing = ("The models the caller's key may use (every model with billing off, when no key is needed): "
               "OpenAI's list; Anthropic's with an `anthropic-version` header; Gemini's from google-genai "
               "(`x-goog-api-key` or `?key=`), whose errors are then in that dialect.")
    return {
        "/": {"get": op("A browser is sent to the console (302); an API client gets a 404 naming the base URL",
                        "public", {"302": {"description": "To /console/ (Accept: text/html, console on)"},
                                   **errors("OpenAIError", (404,))})},
        "/v1/models": {"get": op("List the key's models", "models", {
            **ok("The models", ANY_OBJECT), **errors("OpenAIError", (401,))}, GEMINI_KEY, description=listing,
            docs=f"{OPENAI_DOCS}/models/list")},
        "/v1/models/{model_id}": {"get": op("One of the key's models", "models", {
            **ok("The model", ANY_OBJECT), **errors("OpenAIError", (401, 404))}, GEMINI_KEY, [model_id],
            description=listing, docs=f"{OPENAI_DOCS}/models/retrieve")},
        "/v1beta/models": {"get": op("List the key's models in Gemini's shape", "models", {
            **ok("The models", ANY_OBJECT), **errors("GeminiError", (401,))}, GEMINI_KEY,
            docs=f"{GEMINI_DOCS}/models")},
        "/v1beta/models/{model_id}": {"get": op("One of the key's models in Gemini's shape", "models", {
            **ok("The model", ANY_OBJECT), **errors("GeminiError", (401, 404))}, GEMINI_KEY, [gemini_model],
            docs=f"{GEMINI_DOCS}/models")},
        "/v1/pricing": {"get": op("Every model's prices", "public", ok("The price list", ref("Pricing")))},
        "/openapi.json": {"get": op("This document", "public", ok("OpenAPI 3.1", ANY_OBJECT))},
        "/healthz": {"get": op("Liveness", "operations", ok("Alive", ref("Status")))},
        "/readyz": {"get": op("Readiness", "operations", {**ok("Ready", ref("Status")), "503": {
            "description": "Starting", "content": json_content(ref("Status"))}})},
        "/metrics": {"get": op("Prometheus metrics", "operations", {"200": {
            "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}})},
    }


def key_paths() -> dict[str, Any]:
    refused = errors("OpenAIError", (401, 404))
    legacy = ("The legacy OpenAI billing route that chat front-ends (NextChat, and others that read new-api) show a "
              "key's balance from, also without /v1 as NextChat calls it. Figures in whole cents: hard_limit_usd - "
              "total_usage / 100 is what the key can still spend, rounded down to a cent. A 404 `billing_disabled` "
              "when billing is off.")
    dates = [param(name, "query", "accepted and ignored: the figure is always the key's UTC month",
                   {"type": "string", "format": "date"}, required=False) for name in ("start_date", "end_date")]
    order_id = param("order_id", "path", "the order's id")
    no_restricted = "With a key not restricted to models (403 `api_key_restricted` otherwise)."
    recharge_errors = errors("OpenAIError", (400, 401, 403, 404))
    paths: dict[str, Any] = {
        BALANCE_PATH: {"get": op("The key's balance: the account's available and held money, the key's month",
                                 "balance", {**ok("The balance", ref("Balance")), **refused}, KEY,
                                 description="A 404 `billing_disabled` when billing is off.")},
        "/v1/recharge/orders": {
            "post": op("Create a USDT recharge order", "recharge", {
                **ok("The order: the address, the exact amount, the payment URI", ref("RechargeOrder"), 201),
                **recharge_errors}, KEY, body=json_body(fields(
                    {"chain": {"type": "string"}, "amount": {"type": "string", "description": "USDT, decimal"}},
                    ("chain", "amount"))), description=no_restricted),
            "get": op("The account's recharge orders", "recharge", {
                **ok("The orders", {"type": "object", "properties": {"object": {"const": "list"}, "data": {
                    "type": "array", "items": ref("RechargeOrder")}}}), **recharge_errors}, KEY,
                description=no_restricted)},
        "/v1/recharge/orders/{order_id}": {"get": op("One recharge order", "recharge", {
            **ok("The order", ref("RechargeOrder")), **recharge_errors}, KEY, [order_id],
            description=no_restricted)},
        "/v1/recharge/deposits": {"get": op("The account's deposits (recharge records)", "recharge", {
            **ok("The deposits", {"type": "object", "properties": {"object": {"const": "list"}, "data": {
                "type": "array", "items": ref("RechargeDeposit")}}}), **recharge_errors}, KEY,
            description=no_restricted)},
    }
    for path in SUBSCRIPTION_PATHS:
        paths[path] = {"get": op("Legacy OpenAI billing subscription (the key's limit)", "balance", {
            **ok("The subscription", ref("BillingSubscription")), **refused}, KEY, description=legacy)}
    for path in USAGE_PATHS:
        paths[path] = {"get": op("Legacy OpenAI billing usage (the key's spend this month)", "balance", {
            **ok("The usage", ref("BillingUsage")), **refused}, KEY, dates, description=legacy)}
    return paths


KEY_SETTINGS: dict[str, Schema] = {
    "monthly_limit": {"type": ["string", "null"], "description": "USD per UTC month, a decimal string"},
    "models": {"type": ["array", "string", "null"], "items": {"type": "string"},
               "description": "the allow-list: a list, or one comma-separated string"},
    "rpm": {"type": ["integer", "string", "null"]}, "tpm": {"type": ["integer", "string", "null"]},
    "expires_at": {"type": ["string", "null"], "description": "an ISO date or date-time, UTC unless given"}}
USD_IN = {"type": "string", "description": "USD as a decimal string such as \"12.50\" (a JSON number is refused)"}
NOTE = {"type": "string", "maxLength": NOTE_MAX}
ADMIN_ROUTES: tuple[tuple[str, str, str, tuple[str, ...], Schema | None, int], ...] = (
    # method, path, summary, query parameters, JSON body, success status
    ("get", "/admin/accounts", "List accounts with their wallets", (), None, 200),
    ("post", "/admin/accounts", "Create an account", (), fields({"name": {"type": "string"}, "credit": USD_IN},
                                                               ("name",)), 201),
    ("get", "/admin/keys", "List keys (never their secrets)", ("account",), None, 200),
    ("post", "/admin/keys", "Create a key; its plaintext is in the answer, once", (), fields(
        {"account": {"type": "string"}, "name": {"type": "string"}, **KEY_SETTINGS}, ("account",)), 201),
    ("post", "/admin/keys/{key_id}/rotate", "A new secret for a key, shown once", (), None, 200),
    ("post", "/admin/keys/{key_id}/disable", "Disable a key", (), None, 200),
    ("post", "/admin/keys/{key_id}/enable", "Enable a key", (), None, 200),
    ("patch", "/admin/keys/{key_id}", "Change a key's name or limits (null clears a limit)", (), fields(
        {"name": {"type": "string"}, **KEY_SETTINGS}), 200),
    ("get", "/admin/wallets/{account}", "An account's wallet", (), None, 200),
    ("get", "/admin/wallets/{account}/history", "An account's ledger entries, newest first", ("limit",), None, 200),
    ("post", "/admin/wallets/{account}/credit", "Credit a wallet", (), fields({"usd": USD_IN, "note": NOTE},
                                                                             ("usd",)), 200),
    ("post", "/admin/wallets/{account}/adjust", "Adjust a wallet up or down, with a reason", (), fields(
        {"usd": USD_IN, "note": NOTE}, ("usd", "note")), 200),
    ("get", "/admin/usage", "Usage and cost by account, key and model for a month", ("account", "key", "month"),
     None, 200),
    ("get", "/admin/usage/{request_id}", "One request's usage row", (), None, 200),
    ("get", "/admin/holds", "Open holds", (), None, 200),
    ("post", "/admin/recharge/addresses", "An account's deposit address on a chain", (), fields(
        {"account": {"type": "string"}, "chain": {"type": "string"}}, ("account", "chain")), 200),
    ("get", "/admin/recharge/deposits", "Deposits, newest first", ("account", "limit"), None, 200),
    ("get", "/admin/recharge/orders", "Recharge orders, newest first", ("account", "limit"), None, 200),
    ("post", "/admin/recharge/deposits/{deposit_id}/credit", "Credit a deposit held below the minimum", (), fields(
        {"note": NOTE}, ("note",)), 200),
    ("post", "/admin/recharge/chains/{chain}/rescan", "Scan a chain again from a block", (), fields(
        {"from_block": {"type": "integer", "minimum": 0}}, ("from_block",)), 200),
)
ADMIN_LISTS = frozenset({"/admin/accounts", "/admin/keys", "/admin/wallets/{account}/history", "/admin/usage",
                         "/admin/holds", "/admin/recharge/deposits", "/admin/recharge/orders"})  # GET: a JSON array
QUERY_TEXT = {"account": "an account's name or id", "key": "a key's id", "month": "YYYY-MM (this month, UTC)",
              "limit": "rows, 1 to 1000"}


def admin_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    note = ("Behind the admin token (`Authorization: Bearer <admin token>`); served on `server.admin_listen` alone "
            "when it is set. Errors are `{\"error\": {...}}` without a request id.")
    for method, path, summary, query, body, status in ADMIN_ROUTES:
        names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
        parameters = [param(n, "path", f"the {n.replace('_', ' ')}") for n in names]
        parameters += [param(q, "query", QUERY_TEXT[q], required=False) for q in query]
        result = LIST_OF_ANY if method == "get" and path in ADMIN_LISTS else ANY_OBJECT
        paths.setdefault(path, {})[method] = op(
            summary, "admin", {**ok("The result", result, status), **errors("OpenAIError", (400, 401, 404, 413, 429))},
            ADMIN, parameters or None, json_body(body) if body is not None else None, description=note)
    return paths


# -- components -------------------------------------------------------------------------------------------------------


def schemas() -> dict[str, Schema]:
    nullable_usd = {"type": ["string", "null"], "pattern": USD["pattern"]}
    return {
        "OpenAIError": {"type": "object", "required": ["error"], "description": "OpenAI's error shape (also /admin's,"
                        " without request_id)", "properties": {"error": {"type": "object", "required": [
                            "message", "type"], "properties": {
                            "message": {"type": "string"}, "type": {"type": "string"},
                            "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]},
                            "request_id": {"type": "string"}}}}},
        "AnthropicError": {"type": "object", "required": ["type", "error"], "description": "Anthropic's error shape",
                           "properties": {"type": {"const": "error"}, "request_id": {"type": "string"},
                                          "error": {"type": "object", "required": ["type", "message"], "properties": {
                                              "type": {"type": "string"}, "message": {"type": "string"}}}}},
        "GeminiError": {"type": "object", "required": ["error"], "description": "Gemini's (google.rpc.Status) error "
                        "shape; details[0] is an ErrorInfo with the gateway's code as reason",
                        "properties": {"error": {"type": "object", "required": ["code", "message", "status"],
                                                 "properties": {"code": {"type": "integer"},
                                                                "message": {"type": "string"},
                                                                "status": {"type": "string"},
                                                                "details": LIST_OF_ANY}}}},
        "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
        "Pricing": {"type": "object", "description": "USD as exact decimal strings; tokens per 1M", "properties": {
            "object": {"const": "list"}, "currency": {"const": "USD"}, "unit": {"type": "string"},
            "data": LIST_OF_ANY}},
        "Balance": {"type": "object", "description": "Account figures are the wallet's (all keys); month figures "
                    "this key's. spendable_usd = min(available_usd, monthly_limit_left_usd)", "required": [
                        "object", "available_usd", "held_usd", "month", "month_spent_usd", "spendable_usd"],
                    "properties": {"object": {"const": "balance"}, "currency": {"const": "USD"},
                                   "available_usd": USD, "held_usd": USD, "month": {"type": "string"},
                                   "month_spent_usd": USD, "key_held_usd": USD, "monthly_limit_usd": nullable_usd,
                                   "monthly_limit_left_usd": nullable_usd, "spendable_usd": USD}},
        "BillingSubscription": {"type": "object", "description": "hard_limit_usd = this month's spend (whole cents, "
                                "rounded up) + what the key can still spend (rounded down to a cent)", "required": [
                                    "object", "hard_limit_usd"], "properties": {
                                    "object": {"const": "billing_subscription"}, "has_payment_method": {
                                        "type": "boolean"}, "soft_limit_usd": {"type": "number"},
                                    "hard_limit_usd": {"type": "number"}, "system_hard_limit_usd": {"type": "number"},
                                    "access_until": {"type": "integer", "description": "the key's expiry, 0: none"}}},
        "BillingUsage": {"type": "object", "required": ["object", "total_usage"], "properties": {
            "object": {"const": "list"}, "total_usage": {"type": "number", "description": "US cents, whole, this "
                                                                                          "UTC month, rounded up"}}},
        "RechargeOrder": {"type": "object", "properties": {
            "id": {"type": "integer"}, "object": {"const": "recharge.order"}, "chain": {"type": "string"},
            "status": {"enum": ["pending", "confirming", "credited", "expired"]}, "address": {"type": "string"},
            "amount": {"type": "string"}, "token": {"const": "USDT"}, "payment_uri": {"type": ["string", "null"]},
            "expires_in": {"type": "integer"}}},
        "RechargeDeposit": {"type": "object", "properties": {
            "id": {"type": "integer"}, "object": {"const": "recharge.deposit"}, "chain": {"type": "string"},
            "tx_hash": {"type": "string"}, "amount": {"type": "string"}, "credit_usd": USD,
            "status": {"enum": ["seen", "credited", "dropped", "held"]}}},
    }


SECURITY_SCHEMES = {
    "bearerKey": {"type": "http", "scheme": "bearer", "bearerFormat": "sk-tt-...",
                  "description": "A TokenToll API key (any route that takes a key reads any of these four places)"},
    "anthropicKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "As Anthropic's SDK"},
    "googleKey": {"type": "apiKey", "in": "header", "name": "x-goog-api-key", "description": "As google-genai"},
    "googleQueryKey": {"type": "apiKey", "in": "query", "name": "key",
                       "description": "Gemini's REST routes only; refused (401) in the URL elsewhere"},
    "adminToken": {"type": "http", "scheme": "bearer", "bearerFormat": "tt-admin-...",
                   "description": "The admin token ($TOKENTOLL_ADMIN_TOKEN, or generated and printed once): /admin"},
}


def document(version: str = API_VERSION) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "TokenToll", "version": version, "description": (
            "A self-hosted LLM API gateway. The relay routes take the providers' own request and response bodies "
            "(see each operation's externalDocs) and answer errors in the caller's dialect; the rest is TokenToll's "
            "own. Money is USD: exact nine-decimal strings, except the legacy billing routes' numbers. With "
            "billing.enabled = false the relay takes no key. The web console under /console is a browser UI and "
            "is not described here.")},
        "externalDocs": {"description": "OpenAI's API reference (the /v1 relay routes)", "url": OPENAI_DOCS},
        "tags": [{"name": "relay", "description": "OpenAI, Anthropic and Gemini routes, held and billed per request"},
                 {"name": "media", "description": "Images and async video tasks, OpenAI's shape"},
                 {"name": "balance", "description": "A key's balance and spend"},
                 {"name": "recharge", "description": "USDT recharge for the key's account"},
                 {"name": "models", "description": "The models a key may use"},
                 {"name": "public", "description": "No key"}, {"name": "operations", "description": "Probes"},
                 {"name": "admin", "description": "The operator's API, behind the admin token"}],
        "paths": {**public_paths(), **relay_paths(), **media_paths(), **key_paths(), **admin_paths()},
        "components": {"schemas": schemas(), "responses": error_responses(),
                       "securitySchemes": SECURITY_SCHEMES},
    }


def document_bytes(version: str = API_VERSION) -> bytes:
    return orjson.dumps(document(version))


DOCUMENT = document_bytes()  # built once, as the gateway starts
