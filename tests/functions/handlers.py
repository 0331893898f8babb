"""
awslambdaric handlers the end-to-end tests run in real runtime processes.

Each does one thing a real function does (answer, fail, hang, log, die) so a
test can pin down how the daemon reacts to it.
"""

import os
import sys
import time


def echo(event, context):
    """Return the event."""
    return event


def fail(event, context):
    """Raise, as a buggy handler does: the RIC posts /error."""
    raise ValueError(f"the function failed on purpose: {event!r}")


def sleep(event, context):
    """Sleep event["seconds"] seconds, then say so (timeouts, concurrency, drain)."""
    seconds = float(event.get("seconds", 1))
    print(f"sleeping {seconds}", flush=True)
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}


def log(event, context):
    """Print event["lines"] to stdout (and one line to stderr), then return."""
    for line in event.get("lines", ["log line one", "log line two"]):
        print(line)
    print("a line on stderr", file=sys.stderr)
    return "logged"


def exit3(event, context):
    """Exit with status 3 mid-invocation, without answering."""
    sys.stdout.flush()
    os._exit(3)


def exit_leaving_a_child(event, context):
    """Start a child that keeps our stdout and stderr open, then exit with status 3."""
    import subprocess

    child = subprocess.Popen(["sleep", str(event.get("child_seconds", 30))])
    print(f"child pid {child.pid}", flush=True)
    os._exit(3)


def _client_context(context):
    client_context = context.client_context
    if client_context is None:
        return None
    return {"custom": client_context.custom, "env": client_context.env}


def context(event, context):
    """What the runtime was told: the context object, its environment, its process."""
    return {
        "aws_request_id": context.aws_request_id,
        "invoked_function_arn": context.invoked_function_arn,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_time_in_millis": context.get_remaining_time_in_millis(),
        "client_context": _client_context(context),
        "environ": dict(os.environ),
        "pid": os.getpid(),
    }


def dispatch(event, context):
    """Run the handler named by event["call"]: one runtime, several behaviours in turn."""
    return globals()[event["call"]](event, context)
