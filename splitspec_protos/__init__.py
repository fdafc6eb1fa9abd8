"""The wire contract (splitspec_v1.proto) and the Python stubs generated from it."""
