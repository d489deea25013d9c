"""The daemon's log formats (wasmtop/logs.py): text as wasmtop has always written it, with
journald's priority prefix under systemd; JSON one object per line, whatever the message holds."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmtop import logs


@pytest.fixture(autouse=True)
def default_after():
    yield
    logs.setup()  # the other tests' daemons log as text to stderr again


def logged(fmt: str, monkeypatch, journald: bool = False, level: str = "info") -> io.StringIO:
    if journald:
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    logs.setup(level, fmt, out)
    return out


def test_text_is_the_old_lines_and_journald_gets_each_lines_priority(monkeypatch, tmp_path):
    out = logged("text", monkeypatch)
    logging.getLogger("wasmtop.daemon").info("serving http://127.0.0.1:9464/metrics")
    logging.getLogger("wasmtop.alertmanager").warning("down")
    assert out.getvalue() == (
        "wasmtop daemon: serving http://127.0.0.1:9464/metrics\nwasmtop alertmanager: down\n"
    )
    # journald's stream: JOURNAL_STREAM names the device and inode of stderr (here a file).
    with open(tmp_path / "journal", "w+") as journal:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        logs.setup("info", "text", journal)
        logging.getLogger("wasmtop.daemon").warning("two\nlines")
        logging.getLogger("wasmtop").error("bad")
        journal.seek(0)
        assert journal.read() == "<4>wasmtop daemon: two\n<4>lines\n<3>wasmtop: bad\n"
    # Inherited by a shell whose stderr is elsewhere: no prefixes.
    logs.setup("info", "text", out := io.StringIO())
    logging.getLogger("wasmtop.daemon").warning("plain")
    assert out.getvalue() == "wasmtop daemon: plain\n"


def test_json_has_time_level_logger_message_and_fields_and_levels_filter(monkeypatch):
    out = logged("json", monkeypatch, level="warning")
    log = logging.getLogger("wasmtop.daemon")
    log.info("not shown")
    log.warning("refused", extra={"fields": {"file": "w.yaml", "line": 3, "level": "x"}})
    (line,) = out.getvalue().splitlines()
    r = json.loads(line)
    assert (r["level"], r["logger"], r["message"]) == ("warning", "wasmtop.daemon", "refused")
    assert (r["file"], r["line"]) == ("w.yaml", 3)  # fields, but never over the four keys
    assert r["time"].endswith("Z") and len(r["time"]) == len("2026-12-06T23:00:00.000Z")


def test_setup_twice_keeps_one_handler_and_refuses_what_it_does_not_know(monkeypatch):
    out = logged("json", monkeypatch)
    logs.setup("info", "json", out)
    logging.getLogger("wasmtop.x").info("once")
    assert len(out.getvalue().splitlines()) == 1
    with pytest.raises(ValueError):
        logs.setup("loud", "json")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_message_is_one_json_line(message):
    out = io.StringIO()
    logs.setup("debug", "json", out)
    logging.getLogger("wasmtop.daemon").info(message)
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["message"] == message


def test_the_libraries_warnings_are_lines_of_the_same_log(monkeypatch):
    out = logged("json", monkeypatch)
    logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter").warning("retrying")
    logging.getLogger("grpc._server").info("not shown: below warning")
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["logger"] == "opentelemetry.exporter.otlp.proto.grpc.exporter"
