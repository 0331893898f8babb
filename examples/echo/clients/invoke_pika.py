"""
Invoke the echo function over AMQP-RPC with pika, the way upstream's clients do:
publish to the queue named after the function, wait for the reply on a private queue.
"""

import json
import sys
import time
import uuid

import pika

url = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@localhost:5672/%2F"
function = sys.argv[2] if len(sys.argv) > 2 else "echo"

connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
reply_queue = channel.queue_declare(queue="", exclusive=True).method.queue
correlation_id = str(uuid.uuid4())
channel.basic_publish(
    exchange="",
    routing_key=function,
    body=json.dumps({"hello": "pika"}).encode(),
    properties=pika.BasicProperties(
        content_type="application/json",
        correlation_id=correlation_id,
        reply_to=reply_queue,
        timestamp=int(time.time()),
    ),
)
for method, properties, body in channel.consume(reply_queue, auto_ack=True, inactivity_timeout=10):
    if method is None:
        sys.exit("no reply within 10 seconds")
    if properties.correlation_id == correlation_id:
        error = (properties.headers or {}).get("X-Amz-Function-Error", "")
        print(error, body.decode())
        break
connection.close()
