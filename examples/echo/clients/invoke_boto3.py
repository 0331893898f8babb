"""Invoke the echo function with boto3, as any AWS SDK user would."""

import json
import sys

import boto3

endpoint = sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8080"
client = boto3.client(
    "lambda",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="unused",
    aws_secret_access_key="unused",
)
answer = client.invoke(
    FunctionName="echo", Payload=json.dumps({"hello": "boto3"}).encode(), LogType="Tail"
)
print(answer["StatusCode"], answer.get("FunctionError", ""), answer["Payload"].read().decode())
