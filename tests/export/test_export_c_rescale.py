"""The C rescale (``qatrun_rescale.h``, through the expressions the C export emits) against the Python
``requantize`` on corner cases: rounding ties, saturation at both ends, negative accumulators, accumulators
at the int32 bound and beyond (int64), offsets, clips, signed outputs, every rescaling mode. One C program
holds every case; each printed value must equal the integer network's."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from qatrun.export.c.emit import Emitter
from qatrun.export.c.lower import CTensor, Step, ctype_of
from qatrun.export.c.templates import CFLAGS, OPT, RESCALE_H
from qatrun.fuse.scaling import MAX_PRODUCT, Requant, requantize, with_mode

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler 'cc' on PATH")

INTEGER_MODES = ("Fixed-point16", "Fixed-point32", "Single-shift", "Double-shift")
INT32_EDGE = [2**31 - 1, 2**31 - 2, -(2**31), -(2**31) + 1]
INT64_EDGE = [2**40 + 1, -(2**40) - 1, 2**52 - 1, -(2**52) + 1]


def base(scale: float, offset: float, lo: int, hi: int, rounding: str = "half_away", clip: float | None = None
         ) -> Requant:
    return Requant("Floating-point", torch.tensor([scale], dtype=torch.float64),
                   torch.tensor([offset], dtype=torch.float64), lo, hi,
                   None if clip is None else torch.tensor([clip], dtype=torch.float64), rounding)


# (name, float requant): scales below and above 1, ties of the product and of the offset, signed ranges.
BASES = [
    ("half", base(0.5, 0.0, 0, 15)),                              # every odd accumulator is a tie
    ("half_even", base(0.5, 0.0, -127, 127, "half_even")),        # ties to even, signed output
    ("quarter_offset", base(0.25, 0.5, -8, 7)),                    # ties from the offset
    ("small", base(0.0123456789, 0.37, 0, 255)),
    ("third", base(1 / 3, -0.25, 0, 15, "half_even")),
    ("large", base(2.5, 0.0, -128, 127)),                         # s > 1: ties at odd accumulators
    ("tiny", base(3.1e-6, 0.0, 0, 255)),
]
CLIPPED = [("clip", base(0.2, 0.0, 0, 15, clip=37.5)), ("clip_int", base(0.125, 0.0, 0, 255, clip=1000.0))]


def accumulators(p: Requant, wide: bool) -> list[int]:
    """Ties around every output level, both saturations, negatives, the int32 (or int64) edges."""
    scale = float(p.scale[0])
    values = set(range(-40, 41))
    for level in range(p.lo - 2, p.hi + 3):  # around each tie acc = (level + 1/2 - o) / s
        centre = (level + 0.5 - float(p.offset[0])) / scale
        values.update(int(np.floor(centre)) + d for d in (-1, 0, 1, 2))
    values.update(INT32_EDGE)
    if wide:
        values.update(INT64_EDGE)
    limit = 2**31 if not wide else 2**53
    values = {v for v in values if -limit <= v < limit}
    if p.integer:  # the integer network guarantees |a M + O| < 2^62 for its accumulators
        m = int(p.multiplier[0])  # type: ignore[index]
        o = int(p.integer_offset()[0])
        values = {v for v in values if abs(v) * m + abs(o) < MAX_PRODUCT}
    return sorted(values)


def cases() -> list[tuple[str, Requant, str]]:
    """(name, requant, accumulator C type) for every base, mode and accumulator width."""
    out = []
    for name, p in BASES:
        for acc in ("int32_t", "int64_t"):
            out.append((f"{name}_f64_{acc}", p, acc))
            for mode in INTEGER_MODES:
                out.append((f"{name}_{mode}_{acc}", with_mode(p, mode), acc))
            out.append((f"{name}_f32_{acc}", with_mode(p, "Floating-point32"), acc))
    for name, p in CLIPPED:
        out.append((f"{name}_f64", p, "int64_t"))
        for mode in INTEGER_MODES:
            out.append((f"{name}_{mode}", with_mode(p, mode), "int64_t"))
    unquantized = Requant("None", torch.tensor([0.0371], dtype=torch.float64), torch.tensor([-1.5], dtype=torch.float64),
                          0, 0)
    out.append(("unquantized", unquantized, "int64_t"))
    return [(name.replace("-", "_"), p, acc) for name, p, acc in out]


def program(all_cases: list[tuple[str, Requant, str]]) -> tuple[str, list[np.ndarray]]:
    """The C test program and, per case, the accumulators it runs."""
    emitter = Emitter(None, 0, "rescale test")  # type: ignore[arg-type]
    bodies, inputs = [], []
    for k, (name, p, acc_type) in enumerate(all_cases):
        ctype = ctype_of(p.lo, p.hi) if p.quantized else "double"
        step = Step("fc", name, [], CTensor(name, (1,), ctype, p.lo, p.hi, None), None, requant=p,  # type: ignore
                    acc_type=acc_type)
        accs = np.array(accumulators(p, acc_type == "int64_t"), dtype=np.int64)
        inputs.append(accs)
        expr = emitter.rescale(step, "acc", "0")
        values = ", ".join(f"{int(v)}LL" if v != -(2**63) else "INT64_MIN" for v in accs)
        printer = ('{ double v = ' + expr + '; uint64_t bits; memcpy(&bits, &v, 8); '
                   'printf("%llu\\n", (unsigned long long)bits); }') if ctype == "double" else \
            f'printf("%ld\\n", (long)({expr}));'
        bodies.append(f"""    {{
        static const int64_t accs{k}[{len(accs)}] = {{{values}}};
        for (i = 0; i < {len(accs)}; ++i) {{
            const {acc_type} acc = ({acc_type})accs{k}[i];
            {printer}
        }}
    }}""")
    source = "#include <stdio.h>\n#include <string.h>\n#include \"qatrun_rescale.h\"\n" + "".join(emitter.consts) + \
        "int main(void)\n{\n    int i;\n" + "\n".join(bodies) + "\n    return 0;\n}\n"
    return source, inputs


def test_rescale_in_c_equals_requantize(tmp_path: Path) -> None:
    all_cases = cases()
    source, inputs = program(all_cases)
    (tmp_path / "qatrun_rescale.h").write_text(RESCALE_H)
    (tmp_path / "rescale_test.c").write_text(source)
    subprocess.run(["cc", OPT, *CFLAGS, "-o", "rescale_test", "rescale_test.c"], cwd=tmp_path, check=True,
                   capture_output=True, text=True)
    printed = subprocess.run(["./rescale_test"], cwd=tmp_path, check=True, capture_output=True,
                             text=True).stdout.split()
    position = 0
    for (name, p, _), accs in zip(all_cases, inputs):
        acc = torch.from_numpy(accs).double().reshape(-1, 1)  # exact: |acc| < 2^53
        expected = requantize(acc, p).reshape(-1)
        got = printed[position:position + len(accs)]
        position += len(accs)
        if p.quantized:
            values = torch.tensor([int(v) for v in got], dtype=torch.int64)
            bad = torch.nonzero(values != expected).reshape(-1)
        else:
            values = torch.tensor([struct.unpack("<d", struct.pack("<Q", int(v)))[0] for v in got],
                                  dtype=torch.float64)
            bad = torch.nonzero(values.view(torch.int64) != expected.view(torch.int64)).reshape(-1)
        assert bad.numel() == 0, (name, [(int(accs[i]), int(values[i]), int(expected[i])) for i in bad[:5]])
    assert position == len(printed)


def test_cases_reach_the_corners() -> None:
    """The table hits ties, both saturations and the int32 edges in every integer mode."""
    for name, p, acc_type in cases():
        if not p.quantized:
            continue
        accs = torch.tensor(accumulators(p, acc_type == "int64_t"), dtype=torch.float64).reshape(-1, 1)
        y = requantize(accs, p)
        assert int(y.min()) == p.lo, name
        assert int(y.max()) == (p.hi if p.clip is None else int(requantize(p.clip.reshape(1, 1), p))), name
        if p.integer:
            assert int(accs.abs().max()) >= 2**30, name  # some accumulators beyond 30 bits
        if p.mode == "Floating-point" and p.clip is None:
            v = accs * p.scale + p.offset
            if name.startswith(("half", "quarter", "large")):  # scales and offsets that make exact ties
                assert bool(((v - torch.floor(v)) == 0.5).any()), name
