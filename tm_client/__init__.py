"""tm client."""
