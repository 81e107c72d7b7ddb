"""The integer network as C99 for microcontrollers, compiled and proven bit-exact after writing it.

    report = export_c(int_gm, "LeNet-QAT-c", images, labels)   # writes, compiles, runs, compares
    print(report.summary())                                    # ROM, RAM, every output equal?

The folder holds ``qatrun_network.h`` (one inference function, sizes, layout), ``qatrun_network.c`` (the
layers, the packed weights as ``const`` arrays, the activation arena), ``qatrun_rescale.h`` (the rescale of
every mode), ``qatrun_test.c`` (a harness reading ``test_data.bin``), a ``Makefile``, ``test_data.bin`` (the
images and labels, N2D2's ``-db-export``), ``memory_map.txt`` / ``memory_map.png`` and ``export_report.json``.

The proof: the export is compiled with the system ``cc`` (and, where the tools exist, for a 32-bit ARM and
run under ``qemu-arm``), run on every image of ``test_data.bin``, and each output compared with the integer
network's. A difference names the first image that differs and, from a debug build that dumps every
layer's output of that image, the first layer that differs. Modules: :mod:`.lower` (the integer graph as C
steps, weight packing), :mod:`.memory` (the static plan), :mod:`.emit` (the sources), :mod:`.templates`
(the fixed files), :mod:`.toolchain` (compilers, qemu, Cortex-M4 size).
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx

from qatrun.errors import RunError
from qatrun.export.c.emit import ROM_PARTS, Emitter
from qatrun.export.c.lower import SIZES, Lowered, lower, node_values, pack_layer, unpack
from qatrun.export.c.memory import check_plan, draw, map_lines, plan
from qatrun.export.c.templates import HARNESS_C, RESCALE_H, makefile
from qatrun.export.c.toolchain import TARGETS, Target, compile_program, m4_size, run_program
from qatrun.fuse.intnet import IntInput, Rescale

DATA_MAGIC = b"QTRNDATA"
DATA_VERSION = 1
BATCH = 256
NUMPY_OF = {"uint8_t": np.uint8, "int8_t": np.int8, "int16_t": np.int16, "int32_t": np.int32, "double": np.float64}


def write_test_data(path: Path, pixels: np.ndarray, labels: np.ndarray) -> int:
    """Writes ``test_data.bin`` (format in ``qatrun_test.c``): uint8 pixels (N, C, H, W), int32 labels (N,).

    Returns:
        The file size.
    """
    n, c, h, w = pixels.shape
    header = DATA_MAGIC + struct.pack("<6I", DATA_VERSION, n, c, h, w, 0)
    try:
        with open(path, "wb") as f:
            f.write(header)
            f.write(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
            f.write(np.asarray(labels, dtype="<i4").tobytes())
    except OSError as e:
        raise RunError(f"cannot write the test data '{path}': {e.strerror}") from None
    return path.stat().st_size


@dataclass
class TargetCheck:
    """The proof on one target.

    Attributes:
        target: ``host`` or ``arm``.
        ran: whether it ran (else ``reason`` says why not).
        images: images compared.
        values: output values compared.
        differing_values: output values that differ from the integer network's.
        first_image: the first image with a difference.
        first_layer: the first layer whose output differs on that image.
        rate: the recognition rate the C program printed.
        checksum: the program's checksum of every output.
        ms_per_image: time per image of the program (host, when timed).
    """

    target: str
    ran: bool
    reason: str = ""
    images: int = 0
    values: int = 0
    differing_values: int = 0
    first_image: int | None = None
    first_layer: str | None = None
    rate: float | None = None
    checksum: str = ""
    ms_per_image: float | None = None

    @property
    def ok(self) -> bool:
        return not self.ran or self.differing_values == 0

    def line(self) -> str:
        if not self.ran:
            return f"  {self.target}: not run ({self.reason})"
        rate = f", rate {self.rate:.2f}%" if self.rate is not None else ""
        timing = f", {self.ms_per_image:.4f} ms per image" if self.ms_per_image is not None else ""
        if self.differing_values == 0:
            return (f"  {self.target}: {self.images} images, all {self.values} outputs equal to the integer "
                    f"network's{rate}, checksum {self.checksum}{timing}")
        return (f"  {self.target}: {self.differing_values} of {self.values} outputs differ; first at image "
                f"{self.first_image}, layer {self.first_layer}")


@dataclass
class CExportReport:
    """What ``-export c`` wrote and proved.

    Attributes:
        folder: the export folder.
        mode: the rescaling mode(s) of the network.
        rom: bytes of ``const`` data: ``weights`` (packed), ``biases``, ``rescale`` (scales, multipliers,
            shifts, offsets), ``tables`` (the region indices of fractional max-pooling), ``total``;
            ``float32_weights``: the same parameters at float32.
        ram: bytes: ``arena`` (activations), ``input``, ``output``, ``stack`` (the largest layer's
            temporaries), ``total``; ``activations_float32``: every activation at float32, summed.
        layers: per step: name, kind, output shape and type, weight bits, bytes.
        checks: the proof per target.
        m4: Cortex-M4 ``text``/``data``/``bss`` of the network, or why it was not measured.
    """

    folder: Path
    mode: str
    rom: dict[str, int]
    ram: dict[str, int]
    layers: list[dict[str, Any]]
    checks: list[TargetCheck] = field(default_factory=list)
    m4: dict[str, int] | str = "not measured"

    @property
    def ok(self) -> bool:
        """Every target that ran computed every output as the integer network does."""
        return all(check.ok for check in self.checks)

    def first_difference(self) -> str:
        """``first difference on host: image 3, layer conv2`` (empty when ok)."""
        for check in self.checks:
            if not check.ok:
                return f"first difference on {check.target}: image {check.first_image}, layer {check.first_layer}"
        return ""

    def summary(self) -> str:
        rom, ram = self.rom, self.ram
        tables = f", region tables {rom['tables']}" if rom.get("tables") else ""
        lines = [
            f"C export '{self.folder}' ({self.mode}): ROM {rom['total']} bytes (weights {rom['weights']}, biases "
            f"{rom['biases']}, rescale {rom['rescale']}{tables}; float32 weights {rom['float32_weights']}), RAM "
            f"{ram['total']} bytes (arena {ram['arena']}, input {ram['input']}, output {ram['output']}, stack "
            f"{ram['stack']}; activations at float32 {ram['activations_float32']})",
        ]
        if isinstance(self.m4, dict):
            lines.append(f"  Cortex-M4 (arm-none-eabi-gcc -Os): text {self.m4['text']}, data {self.m4['data']}, "
                         f"bss {self.m4['bss']} bytes")
        else:
            lines.append(f"  Cortex-M4: not measured ({self.m4})")
        lines += [check.line() for check in self.checks]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "mode": self.mode, "rom": self.rom, "ram": self.ram,
                "layers": self.layers, "checks": [asdict(c) for c in self.checks], "m4": self.m4, "ok": self.ok}


# ------------------------------------------------------------------------------------------------ export


def _pixels(int_gm: fx.GraphModule, images: Tensor) -> np.ndarray:
    steps = next((m.steps for m in int_gm.modules() if isinstance(m, IntInput)), 255)
    return torch.round(images.detach().cpu().double() * steps).clamp(0, 255).to(torch.uint8).numpy()


def _reference(int_gm: fx.GraphModule, images: Tensor) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for k in range(0, images.shape[0], BATCH):
            outs.append(int_gm(images[k:k + BATCH].float()).reshape(min(BATCH, images.shape[0] - k), -1))
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0))


def _modes(int_gm: fx.GraphModule) -> str:
    modes = dict.fromkeys(m.mode for m in int_gm.modules() if isinstance(m, Rescale) and m.mode != "None")
    return ", ".join(modes) or "None"


def _layer_rows(low: Lowered, rom: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    rows = []
    for step in low.steps:
        entry = rom.get(step.name, dict.fromkeys(ROM_PARTS, 0))
        rows.append({"name": step.name + (f" + {step.checked[-1].name}" if step.pool else ""), "kind": step.kind,
                     "output": "x".join(map(str, step.output.shape)), "type": step.output.ctype,
                     "weight_bits": step.packed.bits if step.packed is not None else None,
                     "accumulator": step.acc_type, **entry, "stack": step.scratch_bytes})
    return rows


def _float32_weights(low: Lowered) -> int:
    total = 0
    for step in low.steps:
        if step.packed is not None:
            total += 4 * (int(step.module.weight.numel()) + int(step.module.bias.numel()))
    return total


def _activations_float32(low: Lowered) -> int:
    nodes = {low.input.node}
    for step in low.steps:
        nodes.update(step.checked)
    return sum(4 * int(np.prod(low.shapes[n][1:])) for n in nodes)


def write_export(int_gm: fx.GraphModule, folder: Path, sample: Tensor, title: str) -> tuple[Lowered, CExportReport]:
    """Writes the sources, the Makefile and the memory map; returns the lowered network and the report
    (without checks)."""
    low = lower(int_gm, sample[:2])
    arena = plan(low)
    check_plan(low)
    mode = _modes(int_gm)
    emitter = Emitter(low, arena, title)
    source = emitter.source()
    notes = [f"Rescaling: {mode}. Arena: {arena} bytes of static memory, each layer's output placed by lifetime."]
    if low.output.ctype == "double":
        notes.append("The output is unquantized: its scores are doubles, acc * scale + offset.")
    header = emitter.header(notes)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (("qatrun_network.h", header), ("qatrun_network.c", source), ("qatrun_rescale.h", RESCALE_H),
                           ("qatrun_test.c", HARNESS_C), ("Makefile", makefile())):
            (folder / name).write_text(text)
        (folder / "memory_map.txt").write_text("\n".join(map_lines(low, arena)) + "\n")
    except OSError as e:
        raise RunError(f"cannot write the C export into '{folder}': {e.strerror}") from None
    draw(low, arena, folder / "memory_map.png", title)
    layer_rom = emitter.rom
    rom = {part: sum(entry[part] for entry in layer_rom.values()) for part in ROM_PARTS}
    rom["total"] = sum(rom.values())
    rom["float32_weights"] = _float32_weights(low)
    ram = {"arena": arena, "input": low.input.nbytes, "output": low.output.nbytes,
           "stack": max(step.scratch_bytes for step in low.steps)}
    ram["total"] = sum(ram.values())
    ram["activations_float32"] = _activations_float32(low)
    return low, CExportReport(folder, mode, rom, ram, _layer_rows(low, layer_rom))


def _read_outputs(path: Path, ctype: str, count: int) -> np.ndarray:
    raw = path.read_bytes()
    if ctype == "double":
        return np.frombuffer(raw, dtype="<f8").reshape(count, -1)
    return np.frombuffer(raw, dtype="<i4").reshape(count, -1).astype(np.int64)


def _parse(stdout: str) -> tuple[float | None, str, float | None]:
    rate = checksum = ms = None
    for line in stdout.splitlines():
        if line.startswith("recognition rate:"):
            rate = float(line.split(":")[1].split("%")[0])
        elif line.startswith("checksum:"):
            checksum = line.split(":")[1].strip()
        elif line.startswith("time:"):
            ms = float(line.split(":")[1].split()[0])
    return rate, checksum or "", ms


def _equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return a.astype(np.float64).view(np.uint64) == b.astype(np.float64).view(np.uint64)
    return a == b


def _first_layer(target: Target, folder: Path, low: Lowered, int_gm: fx.GraphModule, images: Tensor,
                 image: int) -> str:
    """The first step whose output differs on ``image``, from the debug build's dump of every layer."""
    program = compile_program(target, folder, f"qatrun_test_debug_{target.name}", debug=True)
    dump = folder / f"layers_{target.name}.bin"
    run_program(target, program, ["test_data.bin", "-first", str(image), "-count", "1", "-dump", dump.name], folder)
    values = node_values(int_gm, images[image:image + 1].float())
    raw = dump.read_bytes()
    position = 0
    while position + 8 <= len(raw):
        index, size = struct.unpack_from("<II", raw, position)
        position += 8
        got = raw[position:position + size]
        position += size
        step = low.steps[index]
        expected = values[step.checked[-1]][0].numpy().astype(NUMPY_OF[step.output.ctype]).tobytes()
        if got != expected:
            return step.name + (f" (+ {step.checked[-1].name})" if step.pool else "")
    return "(no layer differs in the debug build: the optimized build differs)"


def check_target(target: Target, folder: Path, low: Lowered, int_gm: fx.GraphModule, images: Tensor,
                 reference: np.ndarray, timing: bool = False) -> TargetCheck:
    """Compiles the export for ``target``, runs it on ``test_data.bin`` and compares every output."""
    reason = target.missing()
    if reason is not None:
        return TargetCheck(target.name, False, reason)
    program = compile_program(target, folder, f"qatrun_test_{target.name}")
    out = folder / f"outputs_{target.name}.bin"
    args = ["test_data.bin", "-o", out.name]
    if timing:
        args += ["-repeat", str(max(1, 2000 // max(1, images.shape[0])))]
    stdout = run_program(target, program, args, folder)
    rate, checksum, ms = _parse(stdout)
    got = _read_outputs(out, low.output.ctype, images.shape[0])
    out.unlink(missing_ok=True)
    equal = _equal(got, reference) if got.shape == reference.shape else np.zeros(reference.shape, dtype=bool)
    check = TargetCheck(target.name, True, images=images.shape[0], values=int(reference.size),
                        differing_values=int((~equal).sum()), rate=rate, checksum=checksum, ms_per_image=ms)
    if check.differing_values:
        check.first_image = int(np.nonzero(~equal.all(axis=1))[0][0])
        check.first_layer = _first_layer(target, folder, low, int_gm, images, check.first_image)
    return check


def export_c(
    int_gm: fx.GraphModule,
    folder: str | Path,
    images: Tensor,
    labels: Tensor | None = None,
    targets: tuple[str, ...] = ("host", "arm"),
    title: str = "network",
    timing: bool = False,
    m4: bool = True,
) -> CExportReport:
    """Writes the C export of an integer network into ``folder`` and proves it (see the module note).

    Args:
        int_gm: the integer network (:func:`qatrun.fuse.integerize`), input x = p / 255.
        folder: the export folder (created).
        images: the test images (N, C, H, W) in [0, 1], on the 1/255 grid; written into ``test_data.bin``.
        labels: their labels (N,), for the recognition rate the C program prints (default: zeros).
        targets: where to run the proof: ``host`` (the system cc), ``arm`` (arm-linux-gnueabihf-gcc and
            qemu-arm, skipped with the reason when missing); empty: write only.
        title: the network's name in the sources.
        timing: time the host program (``ms_per_image``).
        m4: measure the Cortex-M4 code size when arm-none-eabi-gcc exists.

    Returns:
        The report: ``ok`` when every output of every target that ran equals the integer network's.

    Raises:
        RunError: a part of the network without a C form, an unwritable folder, a compiler failure.
    """
    folder = Path(folder)
    for name in targets:
        if name not in TARGETS:
            raise RunError(f"unknown C export target {name!r}; expected one of {', '.join(TARGETS)}")
    images = images.detach().cpu()
    if images.dim() != 4 or images.shape[0] == 0:
        raise RunError("the C export needs a batch of test images (N, C, H, W)")
    int_gm = int_gm.cpu().eval()
    low, report = write_export(int_gm, folder, images, title)
    label_array = np.zeros(images.shape[0], dtype=np.int64) if labels is None else labels.detach().cpu().numpy()
    write_test_data(folder / "test_data.bin", _pixels(int_gm, images), label_array)
    reference = _reference(int_gm, images) if targets else np.zeros((0, 0))
    for name in targets:
        report.checks.append(check_target(TARGETS[name], folder, low, int_gm, images, reference,
                                          timing=timing and name == "host"))
    if m4:
        report.m4 = m4_size(folder)
    try:
        (folder / "export_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    except OSError as e:
        raise RunError(f"cannot write '{folder / 'export_report.json'}': {e.strerror}") from None
    return report


__all__ = ["CExportReport", "SIZES", "TargetCheck", "export_c", "pack_layer", "unpack", "write_export",
           "write_test_data"]
