"""
The one awslambdaric handler the AMQP-RPC end-to-end tests run.

A single handler does whatever its event asks, so one daemon per test can
answer, print, sleep and fail: C{{"print": "marker"}} prints a line (for
Event and Tail checks), C{{"sleep": 0.5}} sleeps, C{{"fail": "why"}} raises,
C{{"pid": true}} adds the runtime's pid to the answer (to tell daemons apart),
C{{"context": true}} answers what the runtime was told (client context, trace).
Anything else is echoed unchanged.
"""

import os
import time


def handler(event, context):
    """Do what the event asks, then echo it."""
    if not isinstance(event, dict):
        return event
    if "print" in event:
        print(event["print"], flush=True)
    if "sleep" in event:
        time.sleep(float(event["sleep"]))
    if "fail" in event:
        raise ValueError(event["fail"])
    if event.get("context"):
        client_context = context.client_context
        return {
            "custom": client_context.custom if client_context is not None else None,
            "trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
            "request_id": context.aws_request_id,
        }
    if event.get("pid"):
        return {**event, "pid": os.getpid()}
    return event
