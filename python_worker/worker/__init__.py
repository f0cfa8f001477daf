"""A worker process's life: serving its engine over its transports, and stopping within its grace."""
