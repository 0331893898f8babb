#!/usr/bin/env python3
"""
The sample extension (C{$EXT_SAMPLE}, tests/functions/extensions/sample.py),
run in this process after recording what the tests cannot see from outside:
its pid (kind C{launch}) and, after sleeping C{EXT_REGISTER_DELAY} seconds
(or C{EXT_REGISTER_DELAY_<NAME>}), when it goes on to register (kind
C{delayed}). Copied under the name the sample should register with.
"""

import json
import os
import importlib.util
import sys
import time

NAME = os.path.basename(sys.argv[0])
RECORD_DIR = os.environ.get("EXT_RECORD_DIR")
DELAY = float(
    os.environ.get(
        "EXT_REGISTER_DELAY_" + NAME.upper().replace("-", "_"),
        os.environ.get("EXT_REGISTER_DELAY", "0"),
    )
)


def record(kind, value):
    if RECORD_DIR:
        with open(os.path.join(RECORD_DIR, NAME + ".jsonl"), "a") as f:
            f.write(json.dumps({"kind": kind, "value": value, "at": time.time()}) + "\n")


record("launch", os.getpid())
if DELAY:
    time.sleep(DELAY)
    record("delayed", DELAY)
# Imported, not run as __main__: runpy would set sys.argv[0], the name the sample registers with.
spec = importlib.util.spec_from_file_location("sample", os.environ["EXT_SAMPLE"])
assert spec is not None and spec.loader is not None
sample = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sample)
sample.main()
