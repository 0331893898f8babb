#!/bin/sh
# Invoke the echo function with the AWS CLI (version 2, or version 1: pip install awscli).
endpoint="${1:-http://localhost:8080}"
case "$(aws --version 2>&1)" in
  aws-cli/1.*) raw="" ;;  # version 1 sends --payload as it is
  *) raw="--cli-binary-format raw-in-base64-out" ;;
esac
out="$(mktemp)"
AWS_ACCESS_KEY_ID=unused AWS_SECRET_ACCESS_KEY=unused AWS_DEFAULT_REGION=us-east-1 \
  aws lambda invoke --endpoint-url "$endpoint" --function-name echo $raw \
  --payload '{"hello": "aws cli"}' "$out" && cat "$out" && echo
rm -f "$out"
