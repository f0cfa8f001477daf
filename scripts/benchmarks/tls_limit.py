"""The limit of row 10: bytes read from a bare socket, TLS against plain text, with no gRPC or Krait on the way.

Serves ``MIB`` MiB to each connection on two listeners on ``HOST`` (plain TCP and TLS, Python's ``ssl`` with the
given certificate and key), and prints ``READY <plain port> <tls port>``; a connection's first byte starts the
send, the end of the data closes it. Runs until its stdin closes (the Elixir half,
``elixir_client/bench/remote.exs``, opens it as a Port and reads with ``:gen_tcp`` and ``:ssl``).

    python -m scripts.benchmarks.tls_limit 127.0.0.2 server.crt.pem server.key.pem 512
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import threading

BLOCK = 4 << 20


def serve(listener: socket.socket, context: ssl.SSLContext | None, total: int) -> None:
    block = os.urandom(BLOCK)
    while True:
        conn, _ = listener.accept()
        try:
            stream = context.wrap_socket(conn, server_side=True) if context is not None else conn
            with stream:
                stream.recv(1)
                for _ in range(total // BLOCK):
                    stream.sendall(block)
        except OSError:
            pass  # the reader went early: serve the next one


def main(host: str, cert: str, key: str, mib: int) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    ports = []
    for tls in (None, context):
        listener = socket.create_server((host, 0))
        ports.append(listener.getsockname()[1])
        threading.Thread(target=serve, args=(listener, tls, mib << 20), daemon=True).start()
    print(f"READY {ports[0]} {ports[1]}", flush=True)
    while sys.stdin.buffer.read(65536):
        pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
