"""Long-running processes and entry points: the CLI, the heartbeat, the embedded supervisor, observability."""
