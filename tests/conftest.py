"""Suite-wide rules. Kernel tests (marked ``bpf``) need root, BCC and kernel headers; without
them they skip. Other tests skip where a tool they run is missing (promtool, kubectl, node with
the CRD validator, setpriv, capsh) or the machine lacks what they need (two CPUs, tracefs).
Under WASMTOP_REQUIRE_BPF=1 (CI, after `make setup` installed all of that) every skip is a
failure instead, a kernel test's or any other's, and its message says why it was skipped; a
module that skips as a whole at import (``pytest.importorskip``) is a collection error."""

from __future__ import annotations

import faulthandler
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# CI: no test may skip (the variable kept its name from when only kernel tests were held to it).
NO_SKIPS = os.environ.get("WASMTOP_REQUIRE_BPF") == "1"

# A hang guard, not a speed test (`make kernel-matrix` sets it; emulated kernels are slow and a
# hung test would otherwise stop the whole run without saying where): each phase of a test
# (setup, call, teardown) that runs longer fails with every thread's stack, and the next test
# runs. Should the test's thread never come back to Python, the stacks go to the real stderr
# a minute later and the run exits.
TEST_TIMEOUT_S = float(os.environ.get("WASMTOP_TEST_TIMEOUT_S") or 0)
_REAL_STDERR: int | None = None

# Compiled probe programs go to a cache of this test session's own (inherited by the daemons and
# commands the tests start): each probe variant is compiled by the compiler child the first time
# it is loaded and taken from the cache after, so the suite runs both paths on a fresh machine
# and on one where an earlier run filled /var/cache/wasmtop alike.
if "WASMTOP_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _CACHE = tempfile.mkdtemp(prefix="wasmtop-test-cache-")
    os.environ["WASMTOP_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, True)

try:  # Property-based tests (tests/unit/test_loaders_fuzz.py): a few seconds by default;
    # WASMTOP_HYPOTHESIS_PROFILE=fuzz (`make fuzz`) runs them with many more examples.
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "quick", max_examples=100, deadline=None, database=None, print_blob=True
    )
    settings.register_profile(
        "fuzz",
        max_examples=20_000,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.load_profile(os.environ.get("WASMTOP_HYPOTHESIS_PROFILE", "quick"))
except ImportError:  # hypothesis is in the test extra; without it those tests skip
    pass


def bpf_missing() -> str | None:
    """Why kernel tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "kernel tests need root"
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return f"bcc not importable ({exc}): run `make setup`"
    from wasmtop.probes import features

    for check in (
        features.check_kernel_headers,
        features.check_tracepoints,
        features.check_ringbuf,
    ):
        f = check()
        if not f.ok:
            return f"{f.name}: {f.reason}"
    return None


class PhaseTimeout(BaseException):
    """A test phase outlived WASMTOP_TEST_TIMEOUT_S (a BaseException, so that a test's own
    ``except Exception`` does not swallow it)."""


def pytest_configure(config: pytest.Config) -> None:
    global _REAL_STDERR
    if TEST_TIMEOUT_S > 0 and _REAL_STDERR is None:
        _REAL_STDERR = os.dup(2)  # before the tests' output is captured


def _guard(item: pytest.Item, phase: str) -> Iterator[None]:
    if TEST_TIMEOUT_S <= 0:
        yield
        return

    def expired(signum: int, frame: object) -> None:
        faulthandler.dump_traceback(all_threads=True)  # into the test's captured stderr
        raise PhaseTimeout(
            f"{item.nodeid}: {phase} still running after WASMTOP_TEST_TIMEOUT_S="
            f"{TEST_TIMEOUT_S:g} s; every thread's stack is in its captured stderr"
        )

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT_S)
    if _REAL_STDERR is not None:
        faulthandler.dump_traceback_later(TEST_TIMEOUT_S + 60, exit=True, file=_REAL_STDERR)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    yield from _guard(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    yield from _guard(item, "the test")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield from _guard(item, "teardown")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/bpf/" in str(item.fspath) or "/tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.bpf)


@pytest.hookimpl(specname="pytest_runtest_setup")
def skip_without_bpf(item: pytest.Item) -> None:
    if item.get_closest_marker("bpf"):
        why = bpf_missing()
        if why:
            pytest.skip(why)


def fail_skip(report: pytest.TestReport | pytest.CollectReport, what: str) -> None:
    """Under NO_SKIPS, turn a skipped report into a failure that keeps the skip's reason."""
    if not (NO_SKIPS and report.skipped) or hasattr(report, "wasxfail"):
        return  # an expected failure (xfail) is reported as skipped too: not a skip
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"{what} skipped under WASMTOP_REQUIRE_BPF=1: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    fail_skip(outcome.get_result(), "kernel test" if item.get_closest_marker("bpf") else "test")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    fail_skip(outcome.get_result(), str(collector.nodeid or collector.name))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory):
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (real openssl)."""
    import subprocess

    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "server.crt", d / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate it signed (127.0.0.1, localhost), two client certificates it
    signed (``oncall``, ``dashboard``), and a client certificate of another CA (``stranger``)."""

    ca: Path
    server: tuple[Path, Path]  # (certificate, key)
    oncall: tuple[Path, Path]
    dashboard: tuple[Path, Path]
    stranger: tuple[Path, Path]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Real openssl: the certificates of a gRPC API with client certificates required."""
    import subprocess

    d = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    def self_signed(name: str) -> tuple[Path, Path]:
        cert, key = d / f"{name}.crt", d / f"{name}.key"
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert))  # fmt: skip
        return cert, key

    def signed(name: str, san: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
        cert, key, csr, ext = (d / f"{name}.{x}" for x in ("crt", "key", "csr", "ext"))
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", str(key), "-out", str(csr))  # fmt: skip
        ext.write_text(f"subjectAltName={san}\n")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                "-CAcreateserial", "-days", "2", "-out", str(cert),
                "-extfile", str(ext))  # fmt: skip
        return cert, key

    ca, other_ca = self_signed("ca"), self_signed("other-ca")
    return Pki(
        ca=ca[0],
        server=signed("server", "IP:127.0.0.1,DNS:localhost", ca),
        oncall=signed("oncall", "DNS:oncall.example", ca),
        dashboard=signed("dashboard", "DNS:dashboard.example", ca),
        stranger=signed("stranger", "DNS:oncall.example", other_ca),
    )
