"""Container text made safe for a terminal: no escape sequences, no control characters.

A container's log may hold anything (``printf '\\033[2J\\033]0;PWNED\\007'``); written to a
terminal as it is, it could clear the screen, move the cursor or retitle the window. Displays
show logs through :func:`printable`; the saved log keeps the bytes as they were.
"""

from __future__ import annotations

import re

_TERMINAL_CONTROLS = re.compile(
    r"""
      \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?     # OSC (window title, hyperlinks) up to BEL or ST
    | \x1b[P^_X][^\x1b]*(?:\x1b\\)?           # DCS, PM, APC and SOS strings up to ST
    | \x1b\[[0-?]*[\x20-/]*[@-~]?             # CSI: cursor moves, clear screen, colours
    | \x9b[0-?]*[\x20-/]*[@-~]?               # the same with the 8-bit CSI
    | \x1b[\x20-/]*[0-~]?                     # any other escape sequence
    | [\x00-\x08\x0b-\x1f\x7f-\x9f]           # every other control character but tab
    """,
    re.VERBOSE,
)


def printable(text: str) -> str:
    """``text`` without terminal escape sequences or control characters (tabs are kept).

    Bytes that were not UTF-8 (lone surrogates, see ``LogSink``) become U+FFFD.
    """
    if text.isprintable():  # the common case, checked in C
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape" if _only_escapes(text) else "replace")
        text = raw.decode("utf-8", "replace")
    return _TERMINAL_CONTROLS.sub("", text)


def _only_escapes(text: str) -> bool:
    """Whether every surrogate in ``text`` is one that ``surrogateescape`` made from a byte."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)
