"""The kernel matrix's report (scripts/kernel_matrix_report.py) and the kernel differences it
found, told by wasmtop without a kernel that has them: headers of another kernel, no kprobe
PMU, a kprobe that cannot attach."""

from __future__ import annotations

import errno
import importlib.util
import sys
from pathlib import Path

import pytest

from wasmtop.probes import features, loader

ROOT = Path(__file__).resolve().parents[2]


def report_module():
    spec = importlib.util.spec_from_file_location("kmr", ROOT / "scripts/kernel_matrix_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kmr"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def junit(cases: dict[str, str]) -> str:
    body = ""
    for name, outcome in cases.items():
        file, _, test = name.partition("::")
        inner = {"failed": '<failure message="assert 1 == 2">E</failure>',
                 "skipped": '<skipped message="no">s</skipped>'}.get(outcome, "")  # fmt: skip
        body += f'<testcase classname="x" name="{test}" file="{file}" time="1.5">{inner}</testcase>'
    return f'<testsuites><testsuite name="pytest">{body}</testsuite></testsuites>'


DOCTOR = """feature kprobes         ok           optional  /sys/kernel/tracing/kprobe_events
feature sockops_pid     unavailable  optional  this kernel refuses bpf_get_current_pid_tgid
probe   sched           ok           attached (program from the compiler)
exit 0
"""


def kernel_dir(root: Path, name: str, cases: dict[str, str]) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "junit.xml").write_text(junit(cases))
    (d / "doctor.txt").write_text(DOCTOR)
    (d / "parts.txt").write_text("doctor 37.5 0\ntests 125.0 0\n")
    (d / "collected.txt").write_text("".join(f"{c}\n" for c in cases))


@pytest.fixture
def selected(monkeypatch, tmp_path):
    module = report_module()
    listing = tmp_path / "selected.txt"
    listing.write_text("# a comment\n\ntests/bpf/a.py::test_one\ntests/bpf/b.py::test_two\n"
                       "tests/bpf/c.py\n")  # fmt: skip
    monkeypatch.setattr(module, "SELECTED", listing)
    return module


def test_every_selected_test_passed_on_every_kernel_is_exit_0(selected, tmp_path, capsys):
    cases = {"tests/bpf/a.py::test_one[socket]": "passed",
             "tests/bpf/a.py::test_one[syscalls]": "passed",
             "tests/bpf/b.py::test_two": "passed", "tests/bpf/c.py::test_x": "passed",
             "tests/bpf/c.py::test_y": "passed"}  # fmt: skip
    kernel_dir(tmp_path / "out", "6.1.0-57-amd64", cases)
    kernel_dir(tmp_path / "out", "6.18.44", cases)
    assert selected.main(tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "6.1.0-57-amd64           passed   tests/bpf/a.py::test_one[socket]  (1.5 s)" in out
    assert out.count("passed   ") == 10  # one line per test and kernel (a file: each test)
    assert "| probe sched | ok | ok |" in out
    assert "| feature sockops_pid | unavailable: this kernel refuses" in out
    assert "| tests passed | 5 of 5 | 5 of 5 |" in out
    assert "| tests (wall) | 125 s | 125 s |" in out


@pytest.mark.parametrize("outcome", ["failed", "skipped", "missing"])
def test_a_failed_skipped_or_missing_test_on_any_kernel_is_exit_1(selected, tmp_path, capsys,
                                                                 outcome):  # fmt: skip
    good = {"tests/bpf/a.py::test_one": "passed", "tests/bpf/b.py::test_two": "passed",
            "tests/bpf/c.py::test_x": "passed"}  # fmt: skip
    bad = dict(good)
    if outcome == "missing":
        del bad["tests/bpf/b.py::test_two"]
    else:
        bad["tests/bpf/b.py::test_two"] = outcome
    kernel_dir(tmp_path / "out", "6.1.0-57-amd64", bad)
    kernel_dir(tmp_path / "out", "6.18.44", good)
    assert selected.main(tmp_path / "out") == 1
    out = capsys.readouterr().out
    word = {"failed": "failed ", "skipped": "skipped", "missing": "not run"}[outcome]
    assert f"6.1.0-57-amd64           {word}" in out and "tests/bpf/b.py::test_two" in out


def test_a_run_cut_short_or_a_part_that_failed_is_exit_1(selected, tmp_path, capsys):
    """A whole file of which junit.xml holds only some tests (pytest cut short), and a part
    (doctor, the tests) that exited non-zero: both fail the matrix, with a line saying so."""
    cases = {"tests/bpf/a.py::test_one": "passed", "tests/bpf/b.py::test_two": "passed",
             "tests/bpf/c.py::test_x": "passed"}  # fmt: skip
    kernel_dir(tmp_path / "out", "6.1.0-57-amd64", cases)
    collected = tmp_path / "out" / "6.1.0-57-amd64" / "collected.txt"
    collected.write_text(collected.read_text() + "tests/bpf/c.py::test_y\n")
    assert selected.main(tmp_path / "out") == 1
    assert "6.1.0-57-amd64           not run  tests/bpf/c.py::test_y" in capsys.readouterr().out
    collected.write_text("".join(f"{c}\n" for c in cases))
    assert selected.main(tmp_path / "out") == 0
    (tmp_path / "out" / "6.1.0-57-amd64" / "parts.txt").write_text("doctor 3 1\ntests 9 0\n")
    assert selected.main(tmp_path / "out") == 1
    assert "6.1.0-57-amd64           doctor exited 1" in capsys.readouterr().out


def test_no_results_at_all_is_exit_1(selected, tmp_path):
    assert selected.main(tmp_path / "out") == 1  # not even the directory
    (tmp_path / "out").mkdir()
    assert selected.main(tmp_path / "out") == 1
    kernel_dir(tmp_path / "out", "6.1.0-57-amd64", {})
    (tmp_path / "out" / "6.1.0-57-amd64" / "junit.xml").write_text("<not xml")
    assert selected.main(tmp_path / "out") == 1


def test_the_selection_names_tests_that_exist():
    module = report_module()
    for test in module.selected():
        file, _, name = test.partition("::")
        assert (ROOT / file).is_file(), test
        assert not name or f"def {name}(" in (ROOT / file).read_text(), test


def test_doctor_says_whether_the_headers_are_the_running_kernels(tmp_path):
    gen = tmp_path / "include" / "generated"
    gen.mkdir(parents=True)
    (gen / "utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-57-amd64"\n')
    same = features.check_headers_match(tmp_path, "6.1.0-57-amd64")
    assert same.ok and "struct-reading features could be used" in same.reason
    other = features.check_headers_match(tmp_path, "6.18.44")
    assert not other.ok
    assert other.reason.startswith("the headers are 6.1.0-57-amd64's, the kernel is 6.18.44")
    none = features.check_headers_match(tmp_path / "missing", "6.18.44")
    assert not none.ok and "of an unknown kernel" in none.reason


def test_a_kernel_without_a_kprobe_pmu_is_told_not_guessed(monkeypatch, tmp_path):
    monkeypatch.setattr(loader, "_KPROBE_PMU", tmp_path / "no-such-pmu")
    with pytest.raises(OSError) as exc:
        loader._kprobe_pmu()
    assert exc.value.errno == errno.ENOENT and "no kprobe PMU" in str(exc.value)


def test_a_foreign_redirect_kprobe_that_cannot_attach_is_unavailable_with_why():
    from wasmtop.probes.sockbypass import SockBypassProbe

    class NoKprobe:
        def attach_kprobe(self, event, fn):
            raise OSError(errno.ENOENT, "no kprobe PMU in /sys/bus/event_source")

    probe = SockBypassProbe()
    probe.bpf = NoKprobe()
    probe._count_foreign()
    assert probe.foreign_redirects == {
        "status": "unavailable",
        "reason": "kprobe on tcp_bpf_sendmsg_redir: no kprobe PMU in /sys/bus/event_source",
    }
    assert probe.foreign_counts() == {}


def test_a_hung_test_fails_with_its_stacks_and_the_next_one_runs(tmp_path):
    """WASMTOP_TEST_TIMEOUT_S (set by the kernel matrix): a test phase that does not end fails
    with its name and every thread's stack, even where the test catches Exception, and the
    tests after it run. The suite's own conftest, in a pytest of its own."""
    import os
    import shutil
    import subprocess

    shutil.copy(ROOT / "tests/conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_hang.py").write_text(
        "import threading, time\n"
        "def test_hangs():\n"
        "    try:\n"
        "        threading.Event().wait(120)\n"
        "    except Exception:\n"
        "        pass\n"
        "def test_after():\n"
        "    assert 1 + 1 == 2\n"
    )
    env = dict(os.environ, WASMTOP_TEST_TIMEOUT_S="1", WASMTOP_REQUIRE_BPF="0")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    out = run.stdout
    assert run.returncode == 1, out
    assert "1 failed, 1 passed" in out
    said = "test_hang.py::test_hangs: the test still running after WASMTOP_TEST_TIMEOUT_S=1 s"
    assert said in out
    assert 'File "' in out and "in test_hangs" in out  # the stack, naming the test's frame
    assert "PASSED test_hang.py::test_after" in out
