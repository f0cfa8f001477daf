"""The gRPC tool server: servicer, per-call runner, buffers, sessions and the serve loop."""

from .app import READY_PREFIX, ServeOptions, channel_options, serve

__all__ = ["READY_PREFIX", "ServeOptions", "channel_options", "serve"]
