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
    status: int, error_type: str, message: str, **extra: Any
) -> APIError:
    document = {"Type": "User", "Message": message, **extra}
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


def _runtime_error(status: int, error_type: str, message: str) -> APIError:
    body = json.dumps({"errorMessage": message, "errorType": error_type}).encode()
    return APIError(status, error_type, body)


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
RESPONSE_TOO_LARGE = json.dumps(
    {
        "errorMessage": "Response payload size exceeded maximum allowed payload size "
        f"({MAX_RUNTIME_RESPONSE} bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
    }
).encode()

#: The Runtime API's 202 body: always JSON (the .NET RIC crashes on an empty one).
ACCEPTED = b'{"status":"OK"}'
