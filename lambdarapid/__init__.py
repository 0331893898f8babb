"""
lambdarapid: the Lambda Runtime API Daemon and Lambda Server, on Twisted.

Runs unmodified AWS Lambda container images anywhere: the daemon serves a
function's Runtime Interface Client the Lambda Runtime API and callers the
Invoke API (over HTTP and AMQP-RPC); the server proxies the Invoke API onto
RabbitMQ, where function names are queues.
"""

__version__ = "0.1.0"
