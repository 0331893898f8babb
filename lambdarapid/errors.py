"""
The AWS error catalogue, once, for both APIs.

Invoke API errors are what botocore parses: status code, the
C{x-amzn-ErrorType} header and a JSON body with C{Type}/C{Message}. Runtime
API errors are what the RICs expect: C{errorType}/C{errorMessage}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: The largest buffered response a runtime may post (AWS: 6 MB and a bit).
MAX_RUNTIME_RESPONSE = 6_291_556
#: The largest synchronous Invoke request payload.
MAX_SYNC_PAYLOAD = 6_291_456
#: The largest asynchronous (Event) Invoke request payload.
MAX_ASYNC_PAYLOAD = 1_048_576
#: The largest base64 X-Amz-Client-Context header.
MAX_CLIENT_CONTEXT = 3_583
#: The longest request line plus headers either HTTP API reads.
MAX_REQUEST_HEAD = 16 * 1024


@dataclass
class APIError(Exception):
    """An error response: status, type and a JSON body."""

    status: int
    error_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.error_type}"


def _invoke_error(
    status: int, error_type: str, message: str, kind: str = "User", **extra: Any
) -> APIError:
    document = {"Type": kind, "Message": message, **extra}
    return APIError(status, error_type, json.dumps(document).encode())


def function_not_found(arn: str) -> APIError:
    return _invoke_error(404, "ResourceNotFoundException", f"Function not found: {arn}")


def request_too_large(limit: int) -> APIError:
    return _invoke_error(
        413,
        "RequestTooLargeException",
        f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
    )


def too_many_requests(retry_after: int = 1) -> APIError:
    error = _invoke_error(
        429,
        "TooManyRequestsException",
        "Rate Exceeded.",
        Reason="ReservedFunctionConcurrentInvocationLimitExceeded",
    )
    error.headers["Retry-After"] = str(retry_after)
    return error


def invalid_request_content(message: str) -> APIError:
    return _invoke_error(400, "InvalidRequestContentException", message)


def invalid_parameter(message: str) -> APIError:
    return _invoke_error(400, "InvalidParameterValueException", message)


def invalid_json(detail: str) -> APIError:
    """AWS's answer to a payload that is not JSON."""
    return invalid_request_content(f"Could not parse request body into json: {detail}")


def malformed_request(message: str, status: int = 400) -> APIError:
    """
    An HTTP request the Invoke API cannot frame (bad line endings, lengths,
    chunk sizes): 400, or 413 for a body length over every limit.
    """
    if status == 413:
        return _invoke_error(413, "RequestTooLargeException", message)
    return _invoke_error(status, "InvalidRequestContentException", message)


def header_fields_too_large(limit: int) -> APIError:
    """431: the request line or headers are longer than the Invoke API reads."""
    return _invoke_error(
        431,
        "RequestHeaderFieldsTooLargeException",
        f"Request line and headers must be smaller than {limit} bytes",
    )


def uri_too_long(limit: int) -> APIError:
    """414: the request's URL is longer than the Invoke API reads."""
    return _invoke_error(414, "RequestURITooLongException", f"URI must be shorter than {limit} bytes")


def internal_error(message: str = "An internal error occurred") -> APIError:
    """500 in the Invoke API's shape: an error of ours, not the caller's."""
    return _invoke_error(500, "ServiceException", message, kind="Service")


def invoke_method_not_allowed(allowed: list[str]) -> APIError:
    """405 on the Invoke API, with the methods the path does take."""
    error = unknown_operation(405)
    error.headers["Allow"] = ", ".join(allowed)
    return error


def service_unavailable(message: str, retry_after: int = 1) -> APIError:
    error = _invoke_error(503, "ServiceException", message)
    error.headers["Retry-After"] = str(retry_after)
    return error


def unknown_operation(status: int) -> APIError:
    """What AWS answers for a path or method that is no Lambda API operation."""
    return APIError(
        status,
        "UnknownOperationException",
        json.dumps({"message": "Unknown operation"}).encode(),
    )


# Function URL errors: a C{Message} document and the same C{x-amzn-ErrorType}.


def _url_error(status: int, error_type: str, message: str) -> APIError:
    document = json.dumps({"Message": message}, separators=(",", ":"))
    return APIError(status, error_type, document.encode())


def url_too_large(limit: int = MAX_SYNC_PAYLOAD) -> APIError:
    """413 at a Function URL: the whole event, not just the body, must fit the sync limit."""
    return _url_error(
        413,
        "RequestTooLargeException",
        f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
    )


def url_throttled(retry_after: int = 1) -> APIError:
    """429 at a Function URL: every environment busy and the queue full."""
    error = _url_error(429, "TooManyRequestsException", "Rate Exceeded.")
    error.headers["Retry-After"] = str(retry_after)
    return error


def url_unavailable(message: str, retry_after: int = 1) -> APIError:
    """503 at a Function URL: the daemon is draining, or the server has no broker."""
    error = _url_error(503, "ServiceUnavailableException", message)
    error.headers["Retry-After"] = str(retry_after)
    return error


def url_not_found(message: str) -> APIError:
    """403 at a Function URL with no function behind it, as AWS answers an unknown URL."""
    return _url_error(403, "AccessDeniedException", message)


def function_error_body(error_type: str, message: str) -> bytes:
    """
    The C{{"errorMessage", "errorType"}} document: what runtimes post, what
    the Runtime API answers, and what the daemon makes up when the function
    could not answer (timeouts, exits, init failures).
    """
    return json.dumps({"errorMessage": message, "errorType": error_type}).encode()


def error_document(error_type: str | None, body: bytes) -> bytes:
    """
    What a runtime's error report (init/error, /error, error trailers) is
    answered with: its body, or when it sent none a document made from its
    error type header.
    """
    if body.strip():
        return body
    return function_error_body(error_type or "Unknown", error_type or "Unknown error")


def _runtime_error(status: int, error_type: str, message: str) -> APIError:
    return APIError(status, error_type, function_error_body(error_type, message))


def timed_out_message(request_id: str, seconds: float) -> str:
    """Lambda's words for an invocation that ran out of time."""
    return f"RequestId: {request_id} Error: Task timed out after {seconds:.2f} seconds"


def timed_out_body(request_id: str, seconds: float) -> bytes:
    """The C{Sandbox.Timedout} document a timed-out invocation answers."""
    return function_error_body("Sandbox.Timedout", timed_out_message(request_id, seconds))


def runtime_method_not_allowed(allowed: str) -> APIError:
    """405 on the Runtime API, with the one method the route takes."""
    error = _runtime_error(405, "MethodNotAllowed", f"use {allowed}")
    error.headers["Allow"] = allowed
    return error


def malformed_runtime_request(message: str, status: int = 400) -> APIError:
    """A Runtime API request that cannot be parsed (400) or is over a size cap (414, 431)."""
    error_type = {
        414: "RequestURITooLong",
        431: "RequestHeaderFieldsTooLarge",
    }.get(status, "InvalidRequest")
    return _runtime_error(status, error_type, message)


def container_error(message: str) -> APIError:
    """500 to a runtime whose pending C{GET next} can no longer be answered with an event."""
    return _runtime_error(500, "ContainerError", message)


def invalid_request_id(request_id: str) -> APIError:
    return _runtime_error(
        400, "InvalidRequestID", f"Invalid request ID: {request_id!r} is not in flight"
    )


def invalid_state_transition(message: str) -> APIError:
    return _runtime_error(403, "InvalidStateTransition", message)


def entity_too_large(limit: int = MAX_RUNTIME_RESPONSE) -> APIError:
    return _runtime_error(
        413,
        "RequestEntityTooLarge",
        f"Exceeded maximum allowed payload size ({limit} bytes).",
    )


def invalid_response_mode(mode: str) -> APIError:
    return _runtime_error(
        400, "InvalidFunctionResponseMode", f"Unsupported response mode: {mode!r}"
    )


def not_found_route() -> APIError:
    return _runtime_error(404, "NotFound", "No such route")


#: What the caller gets when the function's response is over the limit.
RESPONSE_TOO_LARGE = function_error_body(
    "Function.ResponseSizeTooLarge",
    "Response payload size exceeded maximum allowed payload size "
    f"({MAX_RUNTIME_RESPONSE} bytes).",
)

#: The Runtime API's 202 body: always JSON (the .NET RIC crashes on an empty one).
ACCEPTED = b'{"status":"OK"}'


# The Extensions API (EXTENSIONS.md §2): every refusal is a 403 unless noted.


def extension_error(error_type: str, message: str, status: int = 403) -> APIError:
    """An Extensions API refusal: C{{"errorMessage", "errorType"}} and its status."""
    return _runtime_error(status, error_type, message)


def invalid_extension_name() -> APIError:
    return extension_error("Extension.InvalidExtensionName", "Empty extension name")


def invalid_event_type(event: str) -> APIError:
    return extension_error("Extension.InvalidEventType", f"Invalid event type: {event}")


def invalid_request_format(message: str) -> APIError:
    return extension_error("InvalidRequestFormat", message)


def invalid_extension_state(message: str) -> APIError:
    return extension_error("Extension.InvalidExtensionState", message)


def registration_closed() -> APIError:
    return extension_error(
        "Extension.RegistrationClosed", "Extension registration closed already"
    )


def too_many_extensions(limit: int) -> APIError:
    return extension_error(
        "Extension.TooManyExtensions", f"Too many extensions registered (the limit is {limit})"
    )


def missing_extension_identifier() -> APIError:
    return extension_error(
        "Extension.MissingExtensionIdentifier", "Missing Lambda-Extension-Identifier header"
    )


def invalid_extension_identifier(identifier: str) -> APIError:
    return extension_error(
        "Extension.InvalidExtensionIdentifier", f"Invalid extension identifier: {identifier!r}"
    )


def unknown_extension_identifier(identifier: str) -> APIError:
    return extension_error(
        "Extension.UnknownExtensionIdentifier", f"Unknown extension identifier: {identifier!r}"
    )


def missing_error_type_header() -> APIError:
    return extension_error(
        "Extension.MissingHeader", "Missing Lambda-Extension-Function-Error-Type header"
    )


# The Telemetry and Logs APIs (EXTENSIONS.md §4): the error types carry the API's name.


def _subscription_error(status: int, error_type: str, message: str) -> APIError:
    body = json.dumps({"errorType": error_type, "errorMessage": message}).encode()
    return APIError(status, error_type, body)


def subscription_invalid(api: str, message: str) -> APIError:
    """400 for a bad subscription: C{ValidationError} (Telemetry) or C{Logs.ValidationError}."""
    error_type = "Logs.ValidationError" if api == "logs" else "ValidationError"
    return _subscription_error(400, error_type, message)


def subscription_closed(api: str) -> APIError:
    """403 for a subscription after Init."""
    prefix = "Logs" if api == "logs" else "Telemetry"
    return _subscription_error(
        403, f"{prefix}.SubscriptionClosed", "Subscriptions are accepted only during Init"
    )


#: The Telemetry and Logs APIs' 200 body: the JSON string "OK".
SUBSCRIBED = b'"OK"'
