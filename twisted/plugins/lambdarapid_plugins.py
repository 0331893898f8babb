"""twistd plugins for lambdarapid: C{twistd -n lambda-rapid} and C{twistd -n lambda-server}."""

from twisted.application.service import ServiceMaker

rapid = ServiceMaker(
    "Lambda Runtime API Daemon",
    "lambdarapid.rapid_tap",
    "Run a Lambda function's Runtime Interface Client and serve the Invoke API.",
    "lambda-rapid",
)

server = ServiceMaker(
    "Lambda Server",
    "lambdarapid.server_tap",
    "Serve the Lambda Invoke API for every function, routed over AMQP-RPC.",
    "lambda-server",
)
