"""Every failure the gateway answers with, as an exception class that carries its HTTP status and code.
Adapters render these in the caller's dialect; nothing else decides a status."""

from __future__ import annotations


class GatewayError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if code is not None:
            self.code = code


class BodyTimeout(GatewayError):
    """The request body did not arrive within server.body_timeout (core/edge.py BodyDeadline)."""

    status, code = 408, "request_timeout"


class BadRequest(GatewayError):
    status, code = 400, "invalid_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class ModelNotFound(GatewayError):
    status, code = 404, "model_not_found"


class NotFound(GatewayError):
    """No such route, or no such object of the caller's (another account's video is not found either)."""

    status, code = 404, "not_found"


class ContentBlocked(GatewayError):
    """The upstream answered, but its safety filter stopped the prompt: nothing was made."""

    status, code = 400, "content_policy_violation"


class VideoNotReady(GatewayError):
    status, code = 400, "video_not_ready"


class TasksNeedBilling(GatewayError):
    status, code = 501, "tasks_need_billing"


class UnknownMethod(GatewayError):
    status, code = 404, "unknown_method"


class MethodNotAllowed(GatewayError):
    status, code = 405, "method_not_allowed"


class BodyTooLarge(GatewayError):
    status, code = 413, "request_too_large"


class AuthenticationFailed(GatewayError):
    status, code = 401, "invalid_api_key"


class PaymentRequired(GatewayError):
    status, code = 402, "billing_shortfall"


class PermissionDenied(GatewayError):
    status, code = 403, "model_not_allowed"


class RateLimited(GatewayError):
    status, code = 429, "rate_limit_exceeded"


class GatewayShuttingDown(GatewayError):
    status, code = 503, "gateway_shutting_down"


class UpstreamError(GatewayError):
    """The upstream failed in a way the client cannot fix; safe to retry."""

    status, code = 502, "upstream_error"
    kind = "error"  # the `kind` label of tokentoll_upstream_errors_total


class UpstreamConnectError(UpstreamError):
    code, kind = "upstream_connect_error", "connect"


class UpstreamClosed(UpstreamError):
    code, kind = "upstream_closed", "closed"


class UpstreamBadStatus(UpstreamError):
    code, kind = "upstream_bad_status", "status"


class UpstreamOverloaded(UpstreamError):
    status, code, kind = 503, "upstream_overloaded", "overloaded"


class UpstreamTimeout(UpstreamError):
    status, code = 504, "upstream_timeout"

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"the upstream did not answer in time ({phase} timeout of {seconds:g}s)")
        self.kind = f"timeout_{phase}"


class UpstreamClientError(GatewayError):
    """The upstream refused the request itself (4xx/429): its status and body are passed on."""

    code = "upstream_rejected"
    kind = "status"

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(f"the upstream answered {status}", headers=headers)
        self.status = status
        self.body = body
