"""Warnings of the INI layer, written to standard error.

N2D2 prints its notices (``Warning: overriding property ...``, ``Notice: Unused section ...``) on the
console and goes on; qatrun does the same, with the file and line in front. The stream is looked up at
each call, so a test (or the CLI) that swaps ``sys.stderr`` sees every message.
"""

from __future__ import annotations

import sys

from qatrun.errors import Location


def warn(message: str, location: Location | None = None, section: str | None = None) -> None:
    """Prints one warning line: ``path:line: warning: [section] message``.

    Args:
        message: what was noticed.
        location: where the text concerned was written, if known.
        section: the section concerned, if any (``""`` is the global section and is not printed).
    """
    text = f"warning: [{section}] {message}" if section else f"warning: {message}"
    if location is not None:
        text = f"{location}: {text}"
    sys.stderr.write(text + "\n")
