"""The HTTP front: JSON calls, Server-Sent Events and WebSocket over the worker's engine (``docs/http.md``).

Its modules: :mod:`.server` (uvicorn on its own thread, started and stopped with the worker), :mod:`.connections`
(a deadline for each request head, a budget of connections), :mod:`.app` (the routes), :mod:`.auth` (token and
its penalty, login session and its secret, Host, Origin), :mod:`.calls` (running a call from the event loop),
:mod:`.feed` (a stream's chunks from the engine's threads to the event loop: overflow and rate limit),
:mod:`.chunks` (the chunk JSON), :mod:`.sse` and :mod:`.websocket`, :mod:`.errors` (error JSON and HTTP statuses).

Starlette and uvicorn are the ``http`` extra: nothing here is imported unless ``--http-port`` is given.
"""
