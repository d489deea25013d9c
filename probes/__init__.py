"""Kernel side of wasmtop: load, attach and read eBPF probes.

Probes know nothing about workloads, traces or exporters: they turn kernel maps and
ring-buffer records into typed records (see ``records``) and nothing more.
"""
