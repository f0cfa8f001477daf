"""The MCP front: every worker's tools for agents, over the Model Context Protocol (``docs/mcp.md``).

Two transports on the same engine as the link, gRPC and HTTP: ``serve --mcp`` speaks MCP on stdin/stdout (how
an agent host launches a local tool server: :mod:`.stdio`), and the HTTP front serves Streamable HTTP at ``/mcp``
(:mod:`.http`) under its own host, TLS, token and origin rules. Both run the official ``mcp`` package's low-level
``Server`` (:mod:`.server`): it speaks the protocol (handshake, JSON-RPC framing, ``notifications/cancelled``
interrupting a handler, the Streamable HTTP sessions); Krait only answers ``tools/list`` and ``tools/call``.

Its modules: :mod:`.schemas` (ListTools' schemas as MCP tools), :mod:`.results` (a result or a chunk as MCP
content), :mod:`.errors` (refusals as JSON-RPC errors, failures as ``isError`` results), :mod:`.calls` (a call
through the engine: unary, or a stream sent as progress), :mod:`.server`, :mod:`.stdio`, :mod:`.http`.

The ``mcp`` package is the ``mcp`` extra: nothing here is imported unless ``--mcp`` or the HTTP front asks.
"""
