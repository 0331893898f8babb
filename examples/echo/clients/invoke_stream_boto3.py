"""Call the Node example's streaming handler with boto3's invoke_with_response_stream: each chunk as it comes."""

import json
import sys
import time

import boto3

endpoint = sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8080"
client = boto3.client(
    "lambda",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="unused",
    aws_secret_access_key="unused",
)
started = time.monotonic()
answer = client.invoke_with_response_stream(
    FunctionName="function",
    Payload=json.dumps({"parts": ["streamed ", "by ", "boto3"], "pause_ms": 500}).encode(),
)
print(answer["StatusCode"], answer["ResponseStreamContentType"])
for event in answer["EventStream"]:
    print(f"{time.monotonic() - started:5.2f} s {event}")
