"""wasmtop: eBPF monitoring for latency-sensitive WebAssembly edge workloads."""

__version__ = "0.1.0"
