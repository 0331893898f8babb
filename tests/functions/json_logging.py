"""A handler that logs the ways functions do: the logging module, print(), and a JSON line of its own."""

import json
import logging

logger = logging.getLogger()


def handler(event, context):
    """Log at INFO and ERROR through logging, print a plain line and a JSON DEBUG line, then answer."""
    logger.info("info from logging")
    logger.error("error from logging")
    print("plain from print", flush=True)
    print(json.dumps({"level": "debug", "message": "debug of my own"}), flush=True)
    return {"ok": True}
