"""The public pages, no log-in: Model Prices (every model's prices, searchable and sortable) and Client Integration
(the base URL and ready-to-paste snippets for curl, the three SDKs and desktop clients)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing.pricing import TokenPrices
from core.config import Model
from core.console.web import ConsoleWeb, Visitor

PLACEHOLDER_KEY = "sk-tt-..."  # never a real key: the visitor pastes their own
HELLO = "Hello!"


@dataclass(frozen=True)
class PriceRow:
    """One model as the prices page shows it: None where the model is not priced that way."""

    name: str
    owned_by: str
    max_output_tokens: int
    tokens: TokenPrices | None
    images: dict[str, int]
    task: int | None
    second: int | None


@dataclass(frozen=True)
class Snippet:
    id: str
    label: str
    text: str
    docs: str


def per_token(model: Model) -> bool:
    """Token prices apply to text models only: an image or video model is priced per image, task or second."""
    return model.kind == "text"


def price_rows(models: dict[str, Model]) -> list[PriceRow]:
    return [PriceRow(m.name, m.owned_by, m.max_output_tokens, m.prices if per_token(m) else None,
                     dict(m.image_prices), m.task_price, m.second_price) for m in models.values()]


def chat_model(models: dict[str, Model]) -> str:
    """The model the snippets name: the first that chats (a text model with more than one output token)."""
    for m in models.values():
        if m.kind == "text" and m.max_output_tokens > 1:
            return m.name
    return next(iter(models))


def snippets(base: str, model: str) -> list[Snippet]:
    """Ready to paste, for a base URL (no trailing slash) and a model name; strings quoted for each language."""
    openai_url, name, key = json.dumps(base + "/v1"), json.dumps(model), json.dumps(PLACEHOLDER_KEY)
    messages = [{"role": "user", "content": HELLO}]
    return [
        Snippet("curl", "curl", _curl(base, {"model": model, "messages": messages}, ""),
                "https://platform.openai.com/docs/api-reference/chat/create"),
        Snippet("curl-stream", "curl, streaming", _curl(base, {
            "model": model, "stream": True, "stream_options": {"include_usage": True}, "messages": messages}, "-N "),
                "https://platform.openai.com/docs/api-reference/chat-streaming"),
        Snippet("python-openai", "Python: openai", f"""from openai import OpenAI

client = OpenAI(base_url={openai_url}, api_key={key})
reply = client.chat.completions.create(
    model={name},
    messages=[{{"role": "user", "content": {json.dumps(HELLO)}}}],
)
print(reply.choices[0].message.content)
""", "https://github.com/openai/openai-python"),
        Snippet("python-anthropic", "Python: anthropic", f"""import anthropic

client = anthropic.Anthropic(base_url={json.dumps(base)}, api_key={key})
message = client.messages.create(
    model={name},
    max_tokens=1024,
    messages=[{{"role": "user", "content": {json.dumps(HELLO)}}}],
)
print(message.content[0].text)
""", "https://github.com/anthropics/anthropic-sdk-python"),
        Snippet("python-genai", "Python: google-genai", f"""from google import genai

client = genai.Client(api_key={key}, http_options={{"base_url": {json.dumps(base)}}})
response = client.models.generate_content(model={name}, contents={json.dumps(HELLO)})
print(response.text)
""", "https://github.com/googleapis/python-genai"),
        Snippet("node-openai", "Node: openai", f"""import OpenAI from "openai";

const client = new OpenAI({{ baseURL: {openai_url}, apiKey: {key} }});
const reply = await client.chat.completions.create({{
  model: {name},
  messages: [{{ role: "user", content: {json.dumps(HELLO)} }}],
}});
console.log(reply.choices[0].message.content);
""", "https://github.com/openai/openai-node"),
        Snippet("env", "Environment variables", f"""export OPENAI_BASE_URL={shlex.quote(base + "/v1")}
export OPENAI_API_KEY={PLACEHOLDER_KEY}
export ANTHROPIC_BASE_URL={shlex.quote(base)}
export ANTHROPIC_API_KEY={PLACEHOLDER_KEY}
export GOOGLE_GEMINI_BASE_URL={shlex.quote(base)}
export GEMINI_API_KEY={PLACEHOLDER_KEY}
""", ""),
    ]


def _curl(base: str, body: dict[str, object], flags: str) -> str:
    return (f"curl {flags}{shlex.quote(base + '/v1/chat/completions')} \\\n"
            f"  -H \"Authorization: Bearer {PLACEHOLDER_KEY}\" \\\n"
            f"  -H \"Content-Type: application/json\" \\\n"
            f"  -d {shlex.quote(json.dumps(body))}\n")


def routes(web: ConsoleWeb) -> list[Route]:
    rows = price_rows(web.settings.models)
    model = chat_model(web.settings.models)

    async def prices(request: Request, v: Visitor) -> Response:
        return web.show(request, v, "prices.html", rows=rows, key=None)

    async def integration(request: Request, v: Visitor) -> Response:
        base = web.base_url(request)
        return web.show(request, v, "integration.html", base=base, model=model, snippets=snippets(base, model))

    return [
        Route("/prices", web.page(prices, login=False), methods=["GET"]),
        Route("/integration", web.page(integration, login=False), methods=["GET"]),
    ]
