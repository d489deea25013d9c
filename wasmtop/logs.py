"""The daemon's log: Python ``logging`` under the ``wasmtop`` logger, on stderr, as text or JSON.

- ``text`` (the default): ``wasmtop daemon: message``, the logger's name with dots as spaces,
  as wasmtop has always written. Under systemd (``JOURNAL_STREAM`` set), each line starts with
  its syslog priority (``<4>`` a warning), which journald reads as the line's level.
- ``json``: one object per line, ``{"time", "level", "logger", "message", ...fields}``, the
  time in RFC 3339 UTC with milliseconds; what a call passes as ``extra={"fields": {...}}`` is
  merged in (Loki and journald's JSON readers take it as is). A line is never split: a message
  with newlines is one JSON string.

Levels: ``debug``, ``info`` (the default), ``warning``, ``error``."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from typing import IO, Any

ROOT = "wasmtop"
LIBRARIES = ("opentelemetry", "grpc")
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_RESERVED = {"time", "level", "logger", "message"}


class TextFormatter(logging.Formatter):
    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name.replace('.', ' ')}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if self.journald:
            prefix = f"<{_SYSLOG.get(record.levelno, 6)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update((str(k), v) for k, v in fields.items() if str(k) not in _RESERVED)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        # ASCII: no character a reader could take for a line break (U+0085, U+2028) stays raw.
        return json.dumps(out, default=str)


class _Stderr(logging.StreamHandler):
    """Whatever ``sys.stderr`` is when a line is written (a test's capture, a redirection)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


def setup(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Send the ``wasmtop`` loggers to ``stream`` (stderr) in ``fmt`` from ``level`` up; called
    again (a reload, a test), it replaces its handler rather than adding one."""
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"expected a level of {LEVELS} and a format of {FORMATS}")
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    handler.wasmtop = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(_journald(stream)))
    # The libraries' own loggers too (the OTLP exporter's retries, gRPC's server), from warnings
    # up: otherwise they would print plain lines into a JSON log.
    for name, floor in ((ROOT, level.upper()), *((lib, "WARNING") for lib in LIBRARIES)):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "wasmtop", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(max(logging.getLevelName(floor), logging.getLevelName(level.upper())))
        logger.propagate = False  # not twice through a root handler someone else configured


def _journald(stream: IO[str] | None) -> bool:
    """stderr is journald's stream: JOURNAL_STREAM names its device and inode (systemd.exec(5));
    the variable alone is inherited by shells and redirected children."""
    dev_ino = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in dev_ino.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


# Until a command says otherwise: info and up, as text, on stderr (what the daemon always wrote).
setup()
