"""Protobuf package ``wasmtop`` (see wasmtop/proto/__init__.py)."""
