"""tm server."""
