"""The HTTP front's default limits, in a module that needs no HTTP library: the CLI shows them in its help and
``serve`` passes them on whether or not the ``http`` extra is installed."""

MAX_JSON_BYTES = 16 << 20  # a JSON body (a call's arguments, a WebSocket frame) by default: --max-json-mb
RECEIPT_TIMEOUT_S = 10.0  # a connection's time to deliver a complete request head (connections.py)
