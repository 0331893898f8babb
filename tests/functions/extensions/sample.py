#!/usr/bin/env python3
"""
An external extension in the shape of the aws-samples Python extension:
register for INVOKE and SHUTDOWN, then loop on event/next.

The tests copy it into an EXTENSIONS_DIR under the name it registers with.
What it does is chosen by EXT_<NAME> (its file name, upper case, - as _) or
else EXT_BEHAVIOUR; every event it gets is appended to EXT_RECORD_DIR/<name>.jsonl.
"""

import http.server
import json
import os
import sys
import threading
import time
import urllib.request

NAME = os.path.basename(sys.argv[0])
API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BEHAVIOUR = os.environ.get("EXT_" + NAME.upper().replace("-", "_"), os.environ.get("EXT_BEHAVIOUR", "normal"))
RECORD_DIR = os.environ.get("EXT_RECORD_DIR")
SLEEP = float(os.environ.get("EXT_SLEEP", "1"))
#: EXT_QUIET=1: print nothing per event (the benchmark measures the mechanism, not the log lines).
QUIET = os.environ.get("EXT_QUIET") == "1"


def record(kind, value):
    if RECORD_DIR:
        with open(os.path.join(RECORD_DIR, NAME + ".jsonl"), "a") as f:
            f.write(json.dumps({"kind": kind, "value": value, "at": time.time()}) + "\n")


def call(method, path, body=None, headers=None):
    request = urllib.request.Request(
        f"http://{API}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def register(events=("INVOKE", "SHUTDOWN")):
    status, headers, body = call(
        "POST",
        "/2020-01-01/extension/register",
        json.dumps({"events": list(events)}).encode(),
        {"Lambda-Extension-Name": NAME},
    )
    record("register", {"status": status, "body": json.loads(body)})
    return headers.get("Lambda-Extension-Identifier")


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        record("telemetry", json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST

    def log_message(self, *args):
        pass  # printing here would feed the extension's own log back to it


def subscribe(identifier, api):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    document: dict = {}
    if api == "logs":
        path, document["schemaVersion"] = "/2020-08-15/logs", "2021-03-18"
    else:
        path, document["schemaVersion"] = "/2022-07-01/telemetry", "2022-12-13"
    document.update(
        {
            "types": os.environ.get("EXT_TYPES", "platform,function").split(","),
            "buffering": {"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25},
            "destination": {"protocol": "HTTP", "URI": f"http://sandbox.localdomain:{port}/telemetry"},
        }
    )
    status, _, body = call(
        "PUT", path, json.dumps(document).encode(), {"Lambda-Extension-Identifier": identifier}
    )
    record("subscribe", {"status": status, "body": json.loads(body)})


def main():
    if BEHAVIOUR == "crash-before-register":
        sys.exit(3)
    if BEHAVIOUR == "never-register":
        time.sleep(3600)
    if BEHAVIOUR == "bind-fixed-port":
        import socket

        listener = socket.socket()
        listener.bind(("127.0.0.1", int(os.environ["EXT_PORT"])))  # fails for a second copy
        listener.listen()
    identifier = register()
    print(f"[{NAME}] registered", flush=True)
    if BEHAVIOUR == "crash-after-register":
        sys.exit(3)
    headers = {"Lambda-Extension-Identifier": identifier}
    if BEHAVIOUR in ("init-error", "exit-error"):
        which = "init" if BEHAVIOUR == "init-error" else "exit"
        status, _, _ = call(
            "POST",
            f"/2020-01-01/extension/{which}/error",
            json.dumps({"errorMessage": "bad config", "errorType": "Extension.ConfigInvalid"}).encode(),
            {**headers, "Lambda-Extension-Function-Error-Type": "Extension.ConfigInvalid"},
        )
        record(which + "-error", status)
        sys.exit(0 if which == "init" else 1)
    if BEHAVIOUR in ("telemetry", "logs"):
        subscribe(identifier, BEHAVIOUR)
    if BEHAVIOUR == "never-next":
        time.sleep(3600)
    while True:
        status, event_headers, body = call("GET", "/2020-01-01/extension/event/next", headers=headers)
        if status != 200:
            record("next-error", {"status": status, "body": body.decode()})
            sys.exit(1)
        event = json.loads(body)
        event["_eventId"] = event_headers.get("Lambda-Extension-Event-Identifier")
        record("event", event)
        if not QUIET:
            print(f"[{NAME}] got {event['eventType']}", flush=True)
        if event["eventType"] == "SHUTDOWN":
            if BEHAVIOUR == "ignore-shutdown":
                time.sleep(3600)
            time.sleep(0.05 if BEHAVIOUR in ("telemetry", "logs") else 0)
            sys.exit(0)
        if BEHAVIOUR == "slow-post-invoke":
            time.sleep(SLEEP)
        if BEHAVIOUR == "crash-on-invoke":
            sys.exit(4)


if __name__ == "__main__":
    main()
