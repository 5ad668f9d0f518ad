"""The OpenAI wire format: same-format passthrough re-exported here (what core/ uses); translation lives in
the submodules chat_client, chat_upstream, responses and responses_request, imported by name."""

from adapters.openai.passthrough import (
    CHAT_LIMIT_FIELDS,
    DEFAULT_COMPLETIONS_MAX_TOKENS,
    LIMIT_FIELDS,
    MAX_CHOICES,
    STREAMING_ENDPOINTS,
    UPSTREAM_PATHS,
    Endpoint,
    InvalidRequest,
    Prepared,
    answers_per_request,
    error_body,
    max_output_tokens,
    meter_response,
    model_object,
    models_list,
    normalize_usage,
    prepare,
    requested_limit,
    stream_error_event,
)
from adapters.openai.passthrough_stream import (
    NOT_JSON,
    RESPONSES_DELTA_EVENTS,
    RESPONSES_FINAL_EVENTS,
    TERMINAL,
    UPSTREAM_ERROR,
    USAGE_ON_CONTENT,
    USAGE_ONLY,
    PassthroughStream,
    without_usage,
)
from adapters.openai.prompt import estimate_prompt, prompt_of

__all__ = [
    "CHAT_LIMIT_FIELDS", "DEFAULT_COMPLETIONS_MAX_TOKENS", "LIMIT_FIELDS", "MAX_CHOICES", "NOT_JSON",
    "RESPONSES_DELTA_EVENTS", "RESPONSES_FINAL_EVENTS", "STREAMING_ENDPOINTS", "TERMINAL", "UPSTREAM_ERROR",
    "UPSTREAM_PATHS", "USAGE_ON_CONTENT", "USAGE_ONLY", "Endpoint", "InvalidRequest", "PassthroughStream", "Prepared",
    "answers_per_request", "error_body", "estimate_prompt", "max_output_tokens", "meter_response", "model_object",
    "models_list", "normalize_usage", "prepare", "prompt_of", "requested_limit", "stream_error_event", "without_usage",
]
