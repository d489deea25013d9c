"""The gRPC API: ``wasmtop/v1/*.proto`` (proto import root: this directory) and the modules
generated from them at install time by setup.py (``*_pb2.py``, ``*_pb2_grpc.py``; not in git)."""
