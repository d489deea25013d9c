"""Protobuf package ``wasmtop.v1``: ``snapshots.proto`` and its generated modules."""
