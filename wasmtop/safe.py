"""Names made safe to print on a terminal.

Much of what wasmtop shows is chosen by whoever runs a process: its comm (``prctl(PR_SET_NAME)``),
pod and namespace names, cgroup paths, request routes, and everything a remote daemon sends. A
name holding ``\\x1b[2J`` would clear the screen, move the cursor or set the window title of the
person watching. ``safe()`` is applied to every such string where it reaches the terminal (the
terminal UI in view.py, the tables in columns.py, the client's connection banner).
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls; lone surrogates (not encodable: writing one to a UTF-8
# terminal raises); the line and paragraph separators; and the bidirectional overrides,
# embeddings and isolates, which reorder what follows them on the line ("Trojan source").
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: object) -> str:
    """``text`` with every control character written as a visible escape: ESC becomes the four
    characters ``\\x1b``, U+202E the six characters ``\\u202e``. Never raises; None and other
    non-strings are shown by ``str()`` first."""
    if not isinstance(text, str):
        text = str(text)
    return _UNSAFE.sub(_escape, text)
