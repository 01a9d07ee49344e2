"""Benchmarks of tm against a baseline gRPC server doing no work (``make bench``)."""
