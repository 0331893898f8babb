#!/bin/sh
# Invoke the echo function with the AWS CLI (pip install awscli).
endpoint="${1:-http://localhost:8080}"
AWS_ACCESS_KEY_ID=unused AWS_SECRET_ACCESS_KEY=unused AWS_DEFAULT_REGION=us-east-1 \
  aws lambda invoke --endpoint-url "$endpoint" --function-name echo \
  --cli-binary-format raw-in-base64-out --payload '{"hello": "aws cli"}' /dev/stdout
