"""A handler module that cannot be imported: every init fails (Runtime.ImportModuleError)."""

import lambdarapid_tests_no_such_module  # noqa: F401


def handler(event, context):
    return event
