"""The gRPC front-end: servicers that decode requests, call the core and encode replies."""
