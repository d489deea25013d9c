"""What the benchmark scripts share: waiting for ``wasmtop snapshot`` to say it attached."""

from __future__ import annotations

import subprocess


def attached_line(proc: subprocess.Popen, *, lines: int = 50) -> str:
    """The ``wasmtop: attached: ...`` line of a ``wasmtop snapshot`` started with
    ``stderr=PIPE, text=True``, read past the notes before it (pod names, ...). Raises
    RuntimeError with what wasmtop said when it ends or says something else ``lines`` times."""
    said = []
    for _ in range(lines):
        line = proc.stderr.readline()
        if not line:
            break
        if line.startswith("wasmtop: attached: "):
            return line
        said.append(line)
    proc.kill()
    raise RuntimeError("wasmtop did not attach:\n" + "".join(said))
