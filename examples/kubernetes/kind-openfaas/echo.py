"""An echo function: returns the event it was given."""


def handler(event, context):
    return event
