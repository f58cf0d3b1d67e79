"""Running tasks on a node: the executor, processes, health checks, logs."""
