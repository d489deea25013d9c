"""The workload filter the terminal UI's ``/`` and the gRPC API's Watch share.

Words separated by spaces; a workload is shown when it matches every kind of word given:

- ``ns:NAME``: its pod is in namespace NAME (several ``ns:`` words: any of them);
- ``pod:NAME``: its pod's name starts with NAME, so ``pod:web`` finds a Deployment's
  ``web-7d9c...`` pods (several: any of them); a pod known only by UID so far matches by the
  start of its UID;
- any other word: part of its name, key or command, case-insensitive (``kernel`` finds kernel
  threads); several: all of them.

A word ``ns:`` or ``pod:`` without a name, a filter longer than MAX_LEN characters, or one with
more than MAX_WORDS words, is a FilterError saying which."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .collector.model import Snapshot, Workload
from .columns import workload_name

MAX_LEN = 512
MAX_WORDS = 32
KINDS = ("ns", "pod")


class FilterError(ValueError):
    """A filter that cannot be used, said for a person."""


@dataclass(frozen=True)
class WorkloadFilter:
    namespaces: tuple[str, ...] = ()
    pods: tuple[str, ...] = ()
    words: tuple[str, ...] = ()  # lower case

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.pods or self.words)

    def matches(self, w: Workload) -> bool:
        pod = w.pod
        if self.namespaces and (pod is None or pod.namespace not in self.namespaces):
            return False
        if self.pods and not (pod and any(_pod_starts(pod, p) for p in self.pods)):
            return False
        label = label_of(w).lower()
        return all(word in label for word in self.words)

    def apply(self, snap: Snapshot) -> Snapshot:
        """``snap`` with only the matching workloads (and wasmtop's own), and the alerts and
        traces of those (a probe's alerts stay); the host-wide parts (events, migrations,
        connections, counters, traces_total) are kept whole."""
        if not self:
            return snap
        # wasmtop's own workloads stay: a UI shows their cost in its header, never as rows.
        kept = tuple(w for w in snap.workloads if w.wasmtop or self.matches(w))
        keys = {w.key for w in kept}
        return dataclasses.replace(
            snap,
            workloads=kept,
            alerts=tuple(a for a in snap.alerts if a.workload is None or a.workload in keys),
            traces=tuple(t for t in snap.traces if t.workload in keys),
        )


def _pod_starts(pod: object, start: str) -> bool:
    """A pod's name starts so, or, for a pod known only by UID so far, its UID."""
    return (getattr(pod, "name", None) or "").startswith(start) or (
        getattr(pod, "uid", None) or ""
    ).startswith(start)


def label_of(w: Workload) -> str:
    """What a plain word matches: names, key, comm, and "kernel" for a kernel thread."""
    return f"{workload_name(w)} {w.key} {w.comm}" + (" kernel" if w.kernel_thread else "")


def parse(text: str) -> WorkloadFilter:
    if len(text) > MAX_LEN:
        raise FilterError(f"a filter of at most {MAX_LEN} characters, got {len(text)}")
    words = text.split()
    if len(words) > MAX_WORDS:
        raise FilterError(f"a filter of at most {MAX_WORDS} words, got {len(words)}")
    found: dict[str, list[str]] = {"ns": [], "pod": [], "": []}
    for word in words:
        kind, sep, value = word.partition(":")
        if sep and kind in KINDS:
            if not value:
                raise FilterError(f"{kind}: needs a name ({kind}:NAME)")
            found[kind].append(value)
        else:
            found[""].append(word.lower())
    # Each kind is a set (any of, or all of): one order and no repeats, so that filters that
    # mean the same are one (the gRPC API encodes a Snapshot once per distinct filter).
    return WorkloadFilter(*(tuple(sorted(set(found[k]))) for k in ("ns", "pod", "")))
