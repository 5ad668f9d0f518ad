"""The internal shape: one provider-neutral request, reply and stream-event vocabulary that every
wire-format adapter parses into and renders from, so three formats need three adapters, not nine translators."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from billing.metering import (
    BASE64_CHARS_PER_TOKEN,
    TOKENS_PER_IMAGE,
    TOKENS_PER_IMAGE_LOW,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_REPLY,
    TextCounter,
    Usage,
)

__all__ = ["Usage"]  # re-exported: adapters speak billing's neutral usage shape


class InvalidRequest(Exception):
    """The client's body is wrong, or asks for something the chosen upstream cannot do; the relay
    answers 400 in the client's own dialect and nothing is held or sent."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# -- content parts --------------------------------------------------------------------------


@dataclass(slots=True)
class Text:
    text: str
    cache: bool = False  # an Anthropic cache_control breakpoint sits on this part


@dataclass(slots=True)
class Media:
    """An image or a document. Exactly one of `data` (base64, no `data:` prefix) and `url` is set."""

    mime: str  # "image/png", "application/pdf", ...; "" when only a URL is known and its type is not
    data: str | None = None
    url: str | None = None
    name: str | None = None  # a file name, when the client gave one
    detail: str | None = None  # OpenAI's image detail: "low" / "high" / "auto"


@dataclass(slots=True)
class Thinking:
    """Reasoning text. `signature` is Anthropic's thinking signature or Gemini's thoughtSignature;
    `redacted` holds Anthropic's redacted_thinking data (then `text` is "")."""

    text: str
    signature: str | None = None
    redacted: str | None = None


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text of the arguments, as OpenAI carries it ("{}" when there are none)
    signature: str | None = None  # Gemini's thoughtSignature on the functionCall part


@dataclass(slots=True)
class ToolResult:
    call_id: str
    content: list[Text | Media]
    name: str | None = None  # the called tool's name when known (Gemini's functionResponse needs it)
    is_error: bool = False


Part = Text | Media | Thinking | ToolCall | ToolResult
Role = Literal["user", "assistant"]


@dataclass(slots=True)
class Message:
    """One turn. Tool results are parts of a user turn; tool calls are parts of an assistant turn."""

    role: Role
    parts: list[Part]


# -- the request ----------------------------------------------------------------------------


@dataclass(slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON Schema object; {"type": "object", "properties": {}} when none
    strict: bool | None = None


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None  # with mode "tool"


@dataclass(slots=True)
class OutputFormat:
    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None


@dataclass(slots=True)
class Reasoning:
    effort: Literal["minimal", "low", "medium", "high"] | None = None
    budget: int | None = None  # thinking tokens; 0 = off
    include_thoughts: bool = True  # return the reasoning text (or summary) to the client


@dataclass(slots=True)
class Chat:
    """A generation request in no particular format. `max_output` is what the client asked for
    (None: not given); the relay decides the limit actually sent and held for."""

    messages: list[Message]
    system: list[Text] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False  # an OpenAI client asked for the usage-only stream chunk
    max_output: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    output_format: OutputFormat | None = None
    reasoning: Reasoning | None = None
    n: int = 1
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None


@dataclass(slots=True)
class Embed:
    inputs: list[str]
    dimensions: int | None = None
    task_type: str | None = None  # Gemini's taskType, passed on only to Gemini


# -- the reply ------------------------------------------------------------------------------

Finish = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(slots=True)
class Reply:
    """One complete answer (a single choice): Text, Thinking and ToolCall parts in order."""

    id: str
    model: str
    parts: list[Part]
    finish: Finish
    stop_sequence: str | None = None
    usage: Usage | None = None  # None: the upstream sent none (the relay counts instead)


@dataclass(slots=True)
class EmbedReply:
    vectors: list[list[float]]
    usage: Usage | None = None


# -- stream events (what an upstream stream reader yields and a client stream writer takes) --


@dataclass(slots=True)
class Start:
    id: str
    model: str


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str
    signature: str | None = None  # a signature-only delta has text ""
    redacted: str | None = None


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of the tool call number `index` (0, 1, 2... in order of appearance across the whole
    answer). The first delta of an index carries `id` and `name`; later ones only arguments."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None
    signature: str | None = None


@dataclass(slots=True)
class UsageUpdate:
    """The upstream's running usage. `final` once it is the whole request's usage (OpenAI's usage
    chunk, Anthropic's message_delta, Gemini's chunk with a finishReason)."""

    usage: Usage
    final: bool


@dataclass(slots=True)
class End:
    """The answer is finished (the upstream may still send a usage update after it)."""

    finish: Finish
    stop_sequence: str | None = None


@dataclass(slots=True)
class StreamError:
    """An in-band error from the upstream; the stream ends with it."""

    message: str
    kind: str  # "overloaded", "rate_limited", "server_error", "invalid_request", ...


Event = Start | TextDelta | ThinkingDelta | ToolCallDelta | UsageUpdate | End | StreamError


@dataclass(slots=True)
class StreamContext:
    """What a client stream writer (and render_response) needs from the relay."""

    request_id: str
    model: str  # the public model name the client asked for
    created: int  # unix seconds
    include_usage: bool = False  # an OpenAI chat client asked for the usage-only chunk
    prompt_estimate: int = 0  # for dialects that announce input tokens before the upstream has said


class StreamReader(Protocol):
    """Decodes one upstream stream. `feed` takes each SSE event (its `event:` name or "", and its
    data) and returns internal events; `done` is true once the upstream's stream is complete."""

    def feed(self, event: str, data: bytes) -> list[Event]: ...

    @property
    def done(self) -> bool: ...


class StreamWriter(Protocol):
    """Renders internal events as one client dialect's SSE bytes. `close` ends a complete stream
    with the usage that was charged; `error` ends it with the dialect's in-band error."""

    def write(self, event: Event) -> bytes: ...

    def close(self, usage: Usage) -> bytes: ...

    def error(self, message: str, code: str) -> bytes: ...


# -- shared helpers -------------------------------------------------------------------------


def parse_arguments(arguments: str) -> dict[str, Any]:
    """Tool-call arguments as an object: "" or invalid JSON gives {}, a non-object {"value": ...}."""
    if not arguments or not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {"value": value}


_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w-]+=[^;,]*)*);base64,", re.ASCII)


def media_from_url(url: str, detail: str | None = None, name: str | None = None) -> Media:
    """A `data:` URL becomes inline base64 with its mime type; anything else stays a URL."""
    m = _DATA_URL.match(url)
    if m:
        mime = (m.group(1) or "application/octet-stream").lower()
        mime = "image/jpeg" if mime == "image/jpg" else mime  # a common misspelling no provider accepts
        return Media(mime=mime, data=url[m.end():], detail=detail, name=name)
    return Media(mime="", url=url, detail=detail, name=name)


def data_url(media: Media) -> str:
    if media.data is None:
        return media.url or ""
    return f"data:{media.mime};base64,{media.data}"


_CALL_ID_OK = re.compile(r"[A-Za-z0-9_-]{1,64}")  # used with fullmatch: `$` would pass a trailing newline
_CALL_ID_BAD = re.compile(r"[^A-Za-z0-9_-]")
SIGNATURE_MARK = "__ts_"  # call-id suffix carrying a Gemini thoughtSignature through formats that drop it


def sanitize_call_id(call_id: str) -> str:
    """A tool-call id Anthropic accepts (^[A-Za-z0-9_-]+$), deterministic so that a call and its
    result map to the same id; a short hash keeps rewritten ids apart."""
    if _CALL_ID_OK.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:8]
    return f"{_CALL_ID_BAD.sub('_', call_id)[:48]}_{digest}" if call_id else f"call_{digest}"


def pack_call_id(call_id: str, signature: str | None) -> str:
    """A tool-call id that also carries Gemini's thoughtSignature (base64url), so a client in another
    format hands it back on the next turn without knowing."""
    if not signature:
        return call_id
    sig = base64.urlsafe_b64encode(signature.encode()).decode().rstrip("=")
    return f"{call_id}{SIGNATURE_MARK}{sig}"


def unpack_call_id(call_id: str) -> tuple[str, str | None]:
    """The inverse of pack_call_id: (the plain id, the signature or None)."""
    head, mark, sig = call_id.partition(SIGNATURE_MARK)
    if not mark or not sig:
        return call_id, None
    try:
        return head, base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return call_id, None


# -- prompt estimation (the same rules for every format; docs/billing.md "Token counting") -----------


def estimate_prompt(chat: Chat) -> int:
    """The prompt's tokens, estimated before sending, whatever format the request came in."""
    count = TextCounter()
    total = TOKENS_PER_REPLY
    if chat.system:
        total += TOKENS_PER_MESSAGE + sum(count(p.text) for p in chat.system)
    for message in chat.messages:
        total += TOKENS_PER_MESSAGE + _parts_tokens(message.parts, count)
    for tool in chat.tools:
        total += count(tool.name) + count(tool.description) + _json_tokens(tool.parameters, count)
    if chat.output_format is not None and chat.output_format.schema is not None:
        total += _json_tokens(chat.output_format.schema, count)
    return total


def has_unsized_media(chat: Chat) -> bool:
    """Whether the prompt holds media whose tokens cannot be known before sending: anything but an image given
    by URL or by id (a video, audio, a PDF or another file; Gemini's fileData; a stored conversation), which
    the estimate counts as nothing. An image's tokens are bounded whatever its size; inline media are counted."""
    return any(_unsized(part) for message in chat.messages for part in message.parts)


def _unsized(part: Part) -> bool:
    if isinstance(part, ToolResult):
        return any(_unsized(p) for p in part.content)
    return isinstance(part, Media) and part.data is None and part.mime != "" and not part.mime.startswith("image/")


def estimate_embed(embed: Embed) -> int:
    count = TextCounter()
    return sum(count(text) for text in embed.inputs)


def _parts_tokens(parts: list[Part], count: TextCounter) -> int:
    total = 0
    for part in parts:
        if isinstance(part, Text):
            total += count(part.text)
        elif isinstance(part, Media):
            total += _media_tokens(part)
        elif isinstance(part, Thinking):
            total += count(part.text)
        elif isinstance(part, ToolCall):
            total += count(part.name) + count(part.arguments)
        else:
            total += count(part.name or "") + _parts_tokens(list(part.content), count)
    return total


def _media_tokens(media: Media) -> int:
    if media.mime.startswith("image/") or (media.data is None and media.mime == ""):
        return TOKENS_PER_IMAGE_LOW if media.detail == "low" else TOKENS_PER_IMAGE
    return -(-len(media.data or "") // BASE64_CHARS_PER_TOKEN)


def _json_tokens(value: Any, count: TextCounter) -> int:
    return count(orjson.dumps(value).decode()) if value else 0
