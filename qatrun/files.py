"""Folders written whole or not at all: the weights folders, ``weights_quantized/``, a run's state.

:func:`atomic_folder` writes into a temporary sibling and swaps it in with two renames, SIGINT / SIGTERM held
back during the set-up, the swap and the clean-up (:func:`signals_deferred`), so that an interrupt or a
failure leaves the old folder or the new one, and no temporary or retired sibling. Standard library only:
the train and fuse packages both write through it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a fresh temporary folder that replaces ``folder`` when the block succeeds.

    The files go to ``<folder>.tmp-<pid>``; on success the old folder is moved aside and the new one renamed
    into place (two renames), so an interrupted run leaves either the old or the new folder, never a half
    written one. On failure (an exception, Ctrl-C included) the temporary folder is removed and ``folder`` is
    untouched. The swap and the clean-up run with SIGINT / SIGTERM held back (:func:`signals_deferred`): a
    signal that arrives there takes effect once they are done, so no ``.tmp-`` or ``.old-`` folder is left.
    """
    target = Path(folder)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    try:
        with signals_deferred():  # a signal held back here fires at the end of the block, inside the try
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        yield tmp
    except BaseException:
        with signals_deferred():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    with signals_deferred():
        swap_folder(tmp, target, old)


def swap_folder(new: Path, target: Path, old: Path) -> None:
    """Renames ``new`` over ``target`` (moving the old ``target`` to ``old``, then removing it).

    A failed rename puts the old folder back and removes ``new``: either way nothing but ``target`` is left.
    """
    moved = False
    try:
        if target.exists():
            target.rename(old)
            moved = True
        new.rename(target)
    except BaseException:
        if moved and not target.exists():
            old.rename(target)
        shutil.rmtree(new, ignore_errors=True)
        raise
    finally:
        if target.exists():  # never the last copy
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Holds SIGINT and SIGTERM back for the block, then delivers them to the handlers of before.

    Python runs signal handlers in the main thread whichever thread the signal reached (torch's worker
    threads included, which a signal mask of the main thread alone would not cover), so the block records them
    with handlers of its own and raises them again at its end.
    """
    held = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or any(signal.getsignal(s) is None for s in held):
        yield  # handlers installed outside Python could not be put back
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(received):
            signal.raise_signal(s)
