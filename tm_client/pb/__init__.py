"""Generated protobuf and gRPC stubs for package tm.v1 (made by `make proto`; do not edit)."""
