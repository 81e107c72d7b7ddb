"""Compilers and runners for the C export: the host ``cc``, Debian's ``arm-linux-gnueabihf-gcc`` with
``qemu-arm`` (a 32-bit ARM, Cortex-A with hard float, user-mode emulation), and ``arm-none-eabi-gcc`` for
the Cortex-M4 code size. Each is found on ``PATH``; a missing one is reported with the reason, and
``scripts/install_cross`` installs the ARM ones."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qatrun.errors import RunError
from qatrun.export.c.templates import CFLAGS, OPT

SOURCES = ("qatrun_network.c", "qatrun_test.c")
M4_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-Os")


@dataclass(frozen=True)
class Target:
    """A place the export runs: a compiler, its extra flags, and the command prefix that runs its programs."""

    name: str
    compiler: str
    flags: tuple[str, ...] = ()
    runner: tuple[str, ...] = ()

    def missing(self) -> str | None:
        """Why this target cannot run here, or None."""
        for tool in (self.compiler, *self.runner[:1]):
            if shutil.which(tool) is None:
                return f"{tool} not found (scripts/install_cross installs it)" if self.name != "host" else \
                    f"no C compiler '{tool}' on PATH"
        return None


HOST = Target("host", "cc")
ARM = Target("arm", "arm-linux-gnueabihf-gcc", ("-static",), ("qemu-arm",))
TARGETS = {"host": HOST, "arm": ARM}


def compile_program(target: Target, folder: Path, output: str, debug: bool = False,
                    opt: str = OPT, extra: tuple[str, ...] = ()) -> Path:
    """Builds the harness and the network in ``folder`` (the Makefile's flags); returns the program.

    Raises:
        RunError: the compiler failed (its first lines of errors are in the message).
    """
    program = folder / output
    command = [target.compiler, opt, *CFLAGS, *extra, *(["-DQATRUN_DEBUG"] if debug else []), "-o", output,
               *SOURCES, *target.flags]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        first = " / ".join(line for line in result.stderr.splitlines()[:4])
        raise RunError(f"{target.compiler} could not compile the C export in '{folder}': {first}")
    return program


def run_program(target: Target, program: Path, args: list[str], cwd: Path) -> str:
    """Runs a built harness (under the target's runner); returns its standard output.

    Raises:
        RunError: the program failed.
    """
    command = [*target.runner, str(program.resolve()), *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RunError(f"the C export's test program failed on {target.name} (exit {result.returncode}): "
                       f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no message'}")
    return result.stdout


def m4_size(folder: Path) -> dict[str, int] | str:
    """text/data/bss bytes of the network (``qatrun_network.c`` alone) built for a Cortex-M4 with
    ``arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os``, or the reason it could not be measured."""
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-size"):
        if shutil.which(tool) is None:
            return f"{tool} not found (scripts/install_cross installs it)"
    obj = folder / "qatrun_network_m4.o"
    result = subprocess.run(["arm-none-eabi-gcc", *M4_FLAGS, *CFLAGS, "-c", "qatrun_network.c", "-o", obj.name],
                            cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        return "arm-none-eabi-gcc failed: " + " / ".join(result.stderr.splitlines()[:3])
    size = subprocess.run(["arm-none-eabi-size", obj.name], cwd=folder, capture_output=True, text=True)
    obj.unlink(missing_ok=True)
    fields = size.stdout.splitlines()[-1].split() if size.returncode == 0 and size.stdout else []
    if len(fields) < 3:
        return "arm-none-eabi-size gave no figures"
    return {"text": int(fields[0]), "data": int(fields[1]), "bss": int(fields[2])}
