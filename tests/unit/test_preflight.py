"""A host without BCC's Python module is told what to install, once, before any probe runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HIDDEN_BCC = """
import sys
sys.modules["bcc"] = None  # as if python3-bpfcc were not installed
from wasmtop.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="preflight checks capabilities first")
@pytest.mark.parametrize("command", [["snapshot", "--seconds", "1"], ["--once"]])
def test_a_missing_bcc_module_is_named_with_the_package_to_install(command: list[str]) -> None:
    res = subprocess.run([sys.executable, "-c", HIDDEN_BCC, *command], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "BCC's Python module is not importable: install python3-bpfcc" in res.stderr
    assert res.stderr.count("\n") == 1  # one line, not one per probe


def test_doctor_lists_bcc_as_a_required_feature() -> None:
    from wasmtop.probes import features

    names = {f.name: f for f in features.detect()}
    assert names["bcc"].required and names["bcc"].ok  # here it is installed (make setup)
