#!/bin/sh
# Invoke the echo function with curl: synchronously, then as an Event, then a DryRun.
endpoint="${1:-http://localhost:8080}"
url="$endpoint/2015-03-31/functions/echo/invocations"
curl -sS -d '{"hello": "curl"}' "$url"; echo
curl -sS -o /dev/null -w 'Event: %{http_code}\n' -H 'X-Amz-Invocation-Type: Event' -d '{}' "$url"
curl -sS -o /dev/null -w 'DryRun: %{http_code}\n' -H 'X-Amz-Invocation-Type: DryRun' -X POST "$url"
