"""The HTTP API: native /api/v1, Pacifica-compatible mounts, health and metrics."""
