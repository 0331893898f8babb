"""
An aws-lambda-powertools app behind a Function URL: its
C{LambdaFunctionUrlResolver} routes on the event's rawPath and method, reads
query parameters, the JSON body and cookies, and answers cookies of its own.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from aws_lambda_powertools.event_handler import LambdaFunctionUrlResolver, Response, content_types
from aws_lambda_powertools.shared.cookies import Cookie

app = LambdaFunctionUrlResolver()


@app.get("/hello/<name>")
def hello(name: str) -> dict[str, Any]:
    event = app.current_event
    return {
        "message": f"{event.get_query_string_value('greeting', 'Hello')}, {name}!",
        "tags": event.resolved_query_string_parameters.get("tag", []),
        "path": event.path,
        "method": event.http_method,
        "cookies": event.cookies,
        "request_id": event.request_context.request_id,
        "aws_request_id": app.lambda_context.aws_request_id,
    }


@app.post("/orders")
def order() -> Response:
    body = app.current_event.json_body
    total = round(sum(line["price"] * line["quantity"] for line in body["lines"]), 2)
    return Response(
        status_code=201,
        content_type=content_types.APPLICATION_JSON,
        body={"customer": body["customer"], "total": total},
        headers={"x-order-lines": str(len(body["lines"]))},
        cookies=[
            Cookie(name="last_order", value="42", path="/"),
            Cookie(
                name="customer",
                value=body["customer"],
                expires=datetime(2030, 1, 1, tzinfo=timezone.utc),
                http_only=True,
            ),
        ],
    )


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
