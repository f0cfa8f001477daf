"""The gRPC front: the ``krait.v1.ToolWorker`` service over the engine, for other languages and remote callers."""
