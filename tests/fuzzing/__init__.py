"""The fuzzer of every RPC's request message (its tests are in ``tests/service``)."""
