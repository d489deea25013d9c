"""The compiled trace-context fast path (``probes/_tracefast.c``), when there is one.

``tracefast`` is the module, or None: not built (a source tree nobody installed), or
``WASMTOP_PURE_PYTHON=1`` in the environment (to compare, or to rule it out). Every function it
has replaces Python code that stays beside it and gives the same answers
(tests/unit/test_tracefast.py runs both on the same records).
"""

from __future__ import annotations

import os
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("WASMTOP_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _tracefast
    except ImportError:
        return None
    return _tracefast


tracefast = _load()
