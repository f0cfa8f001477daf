"""gRPC channel options shared by the worker's server and Krait's Python clients, and the server's own caps."""

from __future__ import annotations


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Message-size and keepalive options, shared by the server and Krait's Python client."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # clients may ping every 10 s without being sent GOAWAY too_many_pings
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


# A connection may carry this many calls at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS) at least: every call a
# worker serves (its --max-calls), the reflection and health streams, pings and refusals beside them.
MIN_STREAMS_PER_CONNECTION = 100
# connections a worker accepts at once (grpc-core closes the ones beyond as they arrive). What bounds the memory
# hostile clients can hold: a call that never sends its message costs ~23 KB (measured), so at most
# MAX_CONNECTIONS x streams per connection of them (128 x 100: ~300 MB). The price: whoever holds every
# connection keeps new ones out, until the handshake or idle timeouts below end the connections that do nothing.
MAX_CONNECTIONS = 128
# a connection with no call for this long is closed (GOAWAY; clients reconnect on their next call)
CONNECTION_IDLE_MS = 120_000
# a connection must finish its TLS handshake and HTTP/2 preface within this
HANDSHAKE_TIMEOUT_MS = 10_000


def server_options(max_message_bytes: int, max_calls: int) -> list[tuple[str, int]]:
    """The server's options: :func:`channel_options`, and the caps that bound what hostile clients can hold (the
    calls of one connection, the connections, idle and half-made connections)."""
    return [
        *channel_options(max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", max(MIN_STREAMS_PER_CONNECTION, max_calls + 32)),
        ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS),
        ("grpc.max_connection_idle_ms", CONNECTION_IDLE_MS),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        # a client pinging more often than every 10 s without calls gets GOAWAY after this many pings
        ("grpc.http2.max_ping_strikes", 2),
    ]
