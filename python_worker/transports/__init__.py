"""Thin fronts over the engine: the local link (the pool's pipe) and gRPC."""
