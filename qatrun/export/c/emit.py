"""C99 sources of a lowered integer network (:mod:`.lower`): ``qatrun_network.h`` and ``qatrun_network.c``.

One static function per step, every size a literal constant (the compiler unrolls and vectorizes the inner
loops); the weights, biases and rescale parameters as ``static const`` arrays; the activations in one static
arena at the offsets of the memory plan (:mod:`.memory`). The network source includes ``<stdint.h>`` alone
(and ``qatrun_rescale.h``): no allocation, no library call; floating point only in the Floating-point modes
and for an unquantized output.

Loops, for an output channel ``o`` of a convolution: its weights are unpacked once into ``w`` (int16), then
each output row is accumulated as ``acc[x] += w * in[...]`` over the valid part of the row (padding adds
real zeros: it is skipped), rescaled, and written (or kept in a row of the fused max-pooling window). An
Fc, and a convolution whose kernel covers its whole input without padding (LeNet's conv3), is one dot
product per output.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from qatrun.errors import RunError
from qatrun.export.c.lower import SIZES, CTensor, Lowered, Step, conv_geometry, pool_geometry
from qatrun.fuse.scaling import Requant

INT32_MAX = 2**31 - 1


def cname(name: str) -> str:
    """A C identifier from a layer name."""
    ident = re.sub(r"\W", "_", name)
    return ident if not ident[:1].isdigit() else f"_{ident}"


ROM_PARTS = ("weights", "biases", "rescale", "tables")
"""What a layer's ``const`` data hold: packed weights, biases, rescale constants, region index tables (FMP)."""


def _array(ctype: str, name: str, values: np.ndarray, per_line: int = 24) -> str:
    flat = [str(int(v)) if ctype not in ("double", "float") else _float(float(v), ctype) for v in values.reshape(-1)]
    if not flat:
        flat = ["0"]
    lines = [", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(flat)}] = {{\n    {body}\n}};\n"


def _float(v: float, ctype: str) -> str:
    text = float(v).hex()  # exact: C99 hexadecimal floating constants
    return text + ("f" if ctype == "float" else "")


def _int_type(values: np.ndarray) -> str:
    if values.size == 0 or (int(values.min()) >= -(2**31) and int(values.max()) <= INT32_MAX):
        return "int32_t"
    return "int64_t"


class Emitter:
    """Writes the C of one lowered network."""

    def __init__(self, low: Lowered, arena_bytes: int, title: str) -> None:
        self.low = low
        self.arena = arena_bytes
        self.title = title
        self.consts: list[str] = []
        self.functions: list[str] = []
        self.rom: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------------------------- tensors

    def pointer(self, t: CTensor, const: bool) -> str:
        if t.place == "input":
            return "input"
        if t.place == "output":
            return "output"
        qual = "const " if const else ""
        return f"({qual}{t.ctype} *)(void *)(qatrun_arena.bytes + {t.offset})"

    def _const(self, step: Step, part: str, ctype: str, suffix: str, values: np.ndarray) -> str:
        name = f"{cname(step.name)}_{suffix}"
        self.consts.append(_array(ctype, name, values))
        entry = self.rom.setdefault(step.name, dict.fromkeys(ROM_PARTS, 0))
        entry[part] += int(values.size) * SIZES.get(ctype, 1)
        return name

    # ------------------------------------------------------------------------------------- rescale

    def rescale(self, step: Step, acc: str, ch: str) -> str:
        """The C expression of the step's rescale of ``acc`` for channel ``ch`` (a value of the output type)."""
        p: Requant = step.requant  # type: ignore[assignment]
        out = step.output.ctype
        if p.clip is not None and p.integer:
            clip = np.floor(p.clip.double().numpy() + 0.5).astype(np.int64)  # round half away: clip >= 0
            c = self._const(step, "rescale", _int_type(clip), "clip", clip)
            acc = f"({acc} < 0 ? 0 : ({acc} > {c}[{ch}] ? {c}[{ch}] : {acc}))"
        elif p.clip is not None:
            c = self._const(step, "rescale", "double", "clip", p.clip.double().numpy())
            acc = f"((double){acc} < 0.0 ? 0.0 : ((double){acc} > {c}[{ch}] ? {c}[{ch}] : (double){acc}))"
        if not p.quantized:
            s = self._const(step, "rescale", "double", "scale", p.scale.double().numpy())
            o = self._const(step, "rescale", "double", "offset", p.offset.double().numpy())
            return f"(double){acc} * {s}[{ch}] + {o}[{ch}]"
        if p.mode == "Floating-point32":
            m = self._const(step, "rescale", "float", "m", p.scale.float().numpy())
            z = self._const(step, "rescale", "int32_t", "zero", p.offset.round().to(torch.int64).numpy())
            a = acc
            if p.bias is not None:
                b = self._const(step, "rescale", "int32_t", "B", p.bias.numpy())
                a = f"((int64_t){acc} + {b}[{ch}])"
            return f"({out})qatrun_round_f32((float){a} * {m}[{ch}], {z}[{ch}], {p.lo}, {p.hi})"
        if p.integer:
            if step.acc_type == "double":
                raise RunError(f"{step.name}: a Sum with non-integer multipliers has no integer-mode C form")
            mult = p.multiplier.numpy()  # type: ignore[union-attr]
            offs = p.integer_offset().numpy()
            shift = p.shift.numpy()  # type: ignore[union-attr]
            mt = _int_type(mult)
            m = self._const(step, "rescale", mt, "M", mult)
            o = self._const(step, "rescale", _int_type(offs), "O", offs)
            n = self._const(step, "rescale", "uint8_t", "n", shift)
            if int(shift.max(initial=0)) > 62:
                raise RunError(f"{step.name}: a rescale shift of {int(shift.max())} bits has no C form")
            if step.acc_type == "int32_t" and mt == "int32_t" and p.clip is None:
                return f"({out})qatrun_rescale_int32({acc}, {m}[{ch}], {o}[{ch}], {n}[{ch}], {p.lo}, {p.hi})"
            return f"({out})qatrun_rescale_int((int64_t){acc}, {m}[{ch}], {o}[{ch}], {n}[{ch}], {p.lo}, {p.hi})"
        even = 1 if p.rounding == "half_even" else 0
        if p.float32:  # N2D2's float32 rescale (the n2d2 flavour): float32 product and sum, then the rounding
            s = self._const(step, "rescale", "float", "scale", p.scale.float().numpy())
            o = self._const(step, "rescale", "float", "offset", p.offset.float().numpy())
            v = f"(double)((float){acc} * {s}[{ch}] + {o}[{ch}])"
            return f"({out})qatrun_round_f64({v}, {p.lo}, {p.hi}, {even})"
        s = self._const(step, "rescale", "double", "scale", p.scale.double().numpy())
        o = self._const(step, "rescale", "double", "offset", p.offset.double().numpy())
        return f"({out})qatrun_round_f64((double){acc} * {s}[{ch}] + {o}[{ch}], {p.lo}, {p.hi}, {even})"

    # ------------------------------------------------------------------------------------- weights

    def weights(self, step: Step) -> tuple[str, str]:
        """Declares the packed weights; returns (the unpacking statements for channel ``o`` into ``w``, decls)."""
        pk = step.packed
        assert pk is not None
        if pk.bits == 16:
            data = self._const(step, "weights", "int16_t", "w", pk.data)
        else:
            data = self._const(step, "weights", "uint8_t", "w", pk.data)
        lines = []
        kernel = pk.fan_in // (pk.connected.shape[1] if pk.connected is not None else 1)
        if pk.connected is None:
            if pk.bits == 16:
                lines.append(f"for (i = 0; i < {pk.fan_in}; ++i) w[i] = {data}[(int32_t)o * {pk.fan_in} + i];")
            else:
                lines.append(f"qatrun_unpack({data}, (uint32_t)o * {pk.fan_in * pk.bits}u, {pk.fan_in}, {pk.bits}, "
                             f"{pk.base}, {pk.step}, w);")
        else:
            conn = self._const(step, "weights", "uint8_t", "conn", pk.connected.astype(np.uint8))
            offs = self._const(step, "weights", "uint32_t", "woff", pk.bit_offsets)  # type: ignore[arg-type]
            cpg = pk.connected.shape[1]
            lines.append(f"cursor = {offs}[o];")
            lines.append(f"for (i = 0; i < {cpg}; ++i) {{")
            lines.append(f"    if ({conn}[o * {cpg} + i]) {{")
            if pk.bits == 16:
                lines.append(f"        for (k = 0; k < {kernel}; ++k) w[i * {kernel} + k] = "
                             f"{data}[cursor + (uint32_t)k];")
                lines.append(f"        cursor += {kernel}u;")
            else:
                lines.append(f"        qatrun_unpack({data}, cursor, {kernel}, {pk.bits}, {pk.base}, {pk.step}, "
                             f"w + i * {kernel});")
                lines.append(f"        cursor += {kernel * pk.bits}u;")
            lines.append("    } else {")
            lines.append(f"        for (k = 0; k < {kernel}; ++k) w[i * {kernel} + k] = 0;")
            lines.append("    }")
            lines.append("}")
        decls = "int16_t w[%d];" % pk.fan_in
        if pk.connected is not None:
            decls += "\n    int32_t k;\n    uint32_t cursor;"
        return "\n        ".join(lines), decls

    def bias(self, step: Step) -> str:
        assert step.bias is not None
        return self._const(step, "biases", _int_type(step.bias), "b", step.bias)

    # ------------------------------------------------------------------------------------- steps

    def centred(self, t: CTensor, expr: str, zero: int, acc: str) -> str:
        cast = "int32_t" if acc != "int64_t" else "int64_t"
        return f"(({cast}){expr} - {zero})" if zero else f"({cast}){expr}"

    def product_terms(self, x: CTensor, expr: str, zero: int, acc: str) -> tuple[str, str]:
        """The input term and the weight type of ``acc += w * term``: both int16 where ``x - z`` fits it (a
        16 x 16 -> 32-bit product, which the compiler vectorizes on any x86-64; it cannot overflow), else the
        accumulator's type."""
        if acc == "int32_t" and -(2**15) <= x.lo - zero and x.hi - zero < 2**15 and x.ctype != "int32_t":
            return (f"(int16_t)((int32_t){expr} - {zero})" if zero else f"(int16_t){expr}"), "int16_t"
        return self.centred(x, expr, zero, acc), acc

    def fc(self, step: Step, fan_in: int, outs: int) -> str:
        x, y = step.inputs[0], step.output
        m = step.module
        pk = step.packed
        assert pk is not None
        if pk.connected is None and pk.bits in (4, 8) and (fan_in * pk.bits) % 8 == 0:
            return self.fc_codes(step, fan_in, outs)
        unpack, decls = self.weights(step)
        b = self.bias(step)
        acc = step.acc_type
        term = self.centred(x, "x[i]", m.input_zero, acc)
        rescale = self.rescale(step, "acc", "o")
        return f"""static void {self.fname(step)}(const {x.ctype} *x, {y.ctype} *y)
{{
    {decls}
    int32_t o, i;
    for (o = 0; o < {outs}; ++o) {{
        {acc} acc = {b}[o];
        {unpack}
        for (i = 0; i < {fan_in}; ++i) acc += ({acc})w[i] * {term};
        y[o] = {rescale};
    }}
}}
"""

    def fc_codes(self, step: Step, fan_in: int, outs: int) -> str:
        """A dot product on the stored codes: ``sum W (x - z) = base sum (x - z) + step sum u (x - z)``, the
        first sum shared by every output, the codes read straight from the packed bytes (4 or 8 bits)."""
        x, y = step.inputs[0], step.output
        m = step.module
        pk = step.packed
        assert pk is not None
        data = self._const(step, "weights", "uint8_t", "w", pk.data)
        b = self.bias(step)
        span = max(abs(x.hi - m.input_zero), abs(x.lo - m.input_zero))
        umax = (1 << pk.bits) - 1
        bound = fan_in * span * (abs(pk.base) + pk.step * umax) + int(np.abs(step.bias).max(initial=0))
        acc = "int32_t" if bound < 2**31 and step.acc_type == "int32_t" else "int64_t"
        z = m.input_zero
        xv = (lambda e: f"((int32_t){e} - {z})") if z else (lambda e: f"(int32_t){e}")
        if pk.bits == 8:
            dot = f"for (i = 0; i < {fan_in}; ++i) dot += ({acc})row[i] * {xv('x[i]')};"
        else:
            dot = (f"for (i = 0; i < {fan_in // 2}; ++i) dot += ({acc})(row[i] & 15u) * {xv('x[2 * i]')}"
                   f" + ({acc})(row[i] >> 4) * {xv('x[2 * i + 1]')};")
        rescale = self.rescale(step, "acc", "o")
        return f"""static void {self.fname(step)}(const {x.ctype} *x, {y.ctype} *y)
{{
    int32_t o, i;
    {acc} total = 0;
    for (i = 0; i < {fan_in}; ++i) total += {xv('x[i]')};
    for (o = 0; o < {outs}; ++o) {{
        const uint8_t *row = {data} + (int32_t)o * {fan_in * pk.bits // 8};
        {acc} dot = 0, acc;
        {dot}
        acc = ({acc}){b}[o] + ({acc})({pk.base}) * total + ({acc}){pk.step} * dot;
        y[o] = {rescale};
    }}
}}
"""

    def conv(self, step: Step) -> str:
        m = step.module
        x, y = step.inputs[0], step.output
        conv_out = (y.shape[1] * step.pool, y.shape[2] * step.pool) if step.pool else y.shape[1:]
        g = conv_geometry(m, x.shape, conv_out)  # type: ignore[arg-type]
        if (g["OH"], g["OW"]) == (1, 1) and (g["KH"], g["KW"]) == (g["H"], g["W"]) and not (g["PY"] or g["PX"]) \
                and m.groups == 1 and not step.pool:
            return self.fc(step, g["C"] * g["H"] * g["W"], g["O"])  # the kernel covers the input: a dot product
        if (g["SX"], g["DX"], g["PX"], g["PY"], g["SY"], g["DY"]) == (1, 1, 0, 0, 1, 1):
            return self.conv_band(step, g)
        unpack, decls = self.weights(step)
        if "w[i" in unpack or "i = 0" in unpack:
            decls += "\n    int32_t i;"
        b = self.bias(step)
        acc = step.acc_type
        term, wtype = self.product_terms(x, "row[ox * %d + dx]" % g["SX"], m.input_zero, acc)
        rescale = self.rescale(step, "acc[ox]", "o")
        if g["PX"] == 0:  # no padding across: every column of the window is inside the row
            columns, lo, hi = "", "0", str(g["OW"])
        else:
            columns = f"""/* the columns ox with 0 <= ox * SX + dx < W */
                        const int32_t lo = dx < 0 ? (-dx + {g['SX'] - 1}) / {g['SX']} : 0;
                        const int32_t hi0 = ({g['W'] - 1} - dx) / {g['SX']} + 1;
                        const int32_t hi = dx > {g['W'] - 1} ? 0 : (hi0 < {g['OW']} ? hi0 : {g['OW']});"""
            lo, hi = "lo", "hi"
        conn = ""
        if step.packed is not None and step.packed.connected is not None:
            conn = f"if (!{cname(step.name)}_conn[o * {g['CPG']} + c]) continue;"
        if step.pool:
            p = step.pool
            rows_decl = f"{y.ctype} rows[{p}][{g['OW']}];\n    int32_t r, px, j;"
            row_loop_open = f"for (py = 0; py < {y.shape[1]}; ++py) {{\n        for (r = 0; r < {p}; ++r) {{\n" \
                            f"            const int32_t oy = py * {p} + r;"
            store = f"rows[r][ox] = {rescale};"
            pool = f"""        }}
        for (px = 0; px < {y.shape[2]}; ++px) {{
            {y.ctype} best = rows[0][px * {p}];
            for (r = 0; r < {p}; ++r)
                for (j = 0; j < {p}; ++j)
                    if (rows[r][px * {p} + j] > best) best = rows[r][px * {p} + j];
            y[((int32_t)o * {y.shape[1]} + py) * {y.shape[2]} + px] = best;
        }}"""
            out_rows = "py"
        else:
            rows_decl = ""
            row_loop_open = f"for (oy = 0; oy < {g['OH']}; ++oy) {{\n        {{"
            store = f"y[((int32_t)o * {g['OH']} + oy) * {g['OW']} + ox] = {rescale};"
            pool = "        }"
            out_rows = "oy"
        return f"""static void {self.fname(step)}(const {x.ctype} *x, {y.ctype} *y)
{{
    {decls}
    {acc} acc[{g['OW']}];
    {rows_decl}
    int32_t o, {out_rows}, c, ky, kx, ox;
    for (o = 0; o < {g['O']}; ++o) {{
        const int32_t cbase = (o / {g['OPG']}) * {g['CPG']};
        {unpack}
        {row_loop_open}
            for (ox = 0; ox < {g['OW']}; ++ox) acc[ox] = {b}[o];
            for (c = 0; c < {g['CPG']}; ++c) {{
                {conn}
                for (ky = 0; ky < {g['KH']}; ++ky) {{
                    const int32_t iy = oy * {g['SY']} - {g['PY']} + ky * {g['DY']};
                    const {x.ctype} *row;
                    if (iy < 0 || iy >= {g['H']}) continue;
                    row = x + ((int32_t)(cbase + c) * {g['H']} + iy) * {g['W']};
                    for (kx = 0; kx < {g['KW']}; ++kx) {{
                        const {wtype} wv = w[(c * {g['KH']} + ky) * {g['KW']} + kx];
                        const int32_t dx = kx * {g['DX']} - {g['PX']};
                        {columns}
                        for (ox = {lo}; ox < {hi}; ++ox) acc[ox] += wv * {term};
                    }}
                }}
            }}
            for (ox = 0; ox < {g['OW']}; ++ox) {store}
{pool}
        }}
    }}
}}
"""

    def conv_band(self, step: Step, g: dict[str, int]) -> str:
        """A valid stride-1 convolution, R output rows at a time: over a band the input rows are contiguous,
        so each weight is one long loop ``acc[j] += w * src[kx + j]`` over ``(R - 1) W + OW`` positions (the
        columns past OW of each row are computed and dropped), a constant trip count the compiler vectorizes."""
        x, y = step.inputs[0], step.output
        m = step.module
        p = max(1, step.pool)
        used = y.shape[1] * p if step.pool else g["OH"]
        rows = band_rows(used, p, g["W"], g["OW"], SIZES[step.acc_type])
        length = (rows - 1) * g["W"] + g["OW"]
        step.band = (rows, length)
        unpack, decls = self.weights(step)
        if "w[i" in unpack or "i = 0" in unpack:
            decls += "\n    int32_t i;"
        b = self.bias(step)
        acc = step.acc_type
        term, wtype = self.product_terms(x, "src[kx + j]", m.input_zero, acc)
        rescale = self.rescale(step, "acc[r * %d + ox]" % g["W"], "o")
        conn = ""
        if step.packed is not None and step.packed.connected is not None:
            conn = f"if (!{cname(step.name)}_conn[o * {g['CPG']} + c]) continue;"
        if step.pool:
            store = f"""for (r = 0; r < {rows}; ++r)
                for (ox = 0; ox < {g['OW']}; ++ox) lv[r][ox] = {rescale};
            for (r = 0; r < {rows // p}; ++r) {{
                for (px = 0; px < {y.shape[2]}; ++px) {{
                    {y.ctype} best = lv[r * {p}][px * {p}];
                    for (ky = 0; ky < {p}; ++ky)
                        for (kx = 0; kx < {p}; ++kx)
                            if (lv[r * {p} + ky][px * {p} + kx] > best) best = lv[r * {p} + ky][px * {p} + kx];
                    y[((int32_t)o * {y.shape[1]} + oy0 / {p} + r) * {y.shape[2]} + px] = best;
                }}
            }}"""
            lv = f"{y.ctype} lv[{rows}][{g['OW']}];\n    int32_t px;"
        else:
            store = f"""for (r = 0; r < {rows}; ++r)
                for (ox = 0; ox < {g['OW']}; ++ox)
                    y[((int32_t)o * {g['OH']} + oy0 + r) * {g['OW']} + ox] = {rescale};"""
            lv = ""
        return f"""static void {self.fname(step)}(const {x.ctype} *x, {y.ctype} *y)
{{
    {decls}
    {acc} acc[{length}];
    {lv}
    int32_t o, oy0, c, ky, kx, j, r, ox;
    for (o = 0; o < {g['O']}; ++o) {{
        const int32_t cbase = (o / {g['OPG']}) * {g['CPG']};
        {unpack}
        for (oy0 = 0; oy0 < {used}; oy0 += {rows}) {{
            for (j = 0; j < {length}; ++j) acc[j] = {b}[o];
            for (c = 0; c < {g['CPG']}; ++c) {{
                {conn}
                for (ky = 0; ky < {g['KH']}; ++ky) {{
                    const {x.ctype} *src = x + ((int32_t)(cbase + c) * {g['H']} + oy0 + ky) * {g['W']};
                    for (kx = 0; kx < {g['KW']}; ++kx) {{
                        const {wtype} wv = w[(c * {g['KH']} + ky) * {g['KW']} + kx];
                        for (j = 0; j < {length}; ++j) acc[j] += wv * {term};
                    }}
                }}
            }}
            {store}
        }}
    }}
}}
"""

    def add(self, step: Step) -> str:
        m = step.module
        y = step.output
        chans, plane = y.shape[0], int(np.prod(y.shape[1:])) if len(y.shape) > 1 else 1
        acc = step.acc_type
        mults = m.multipliers.detach().cpu().double().numpy()
        params = ", ".join(f"const {t.ctype} *x{i}" for i, t in enumerate(step.inputs))
        terms = []
        for i, (t, z) in enumerate(zip(step.inputs, m.zeros)):
            if acc == "double":
                mm = self._const(step, "rescale", "double", f"m{i}", mults[i])
                value = f"(double)((int32_t)x{i}[e] - {z})" if z else f"(double)x{i}[e]"
                terms.append(f"{mm}[c] * {value}")
            else:
                integral = mults[i].astype(np.int64)
                mm = self._const(step, "rescale", _int_type(integral), f"m{i}", integral)
                value = f"(({acc})x{i}[e] - {z})" if z else f"({acc})x{i}[e]"
                terms.append(f"({acc}){mm}[c] * {value}")
        total = " + ".join(terms) if acc != "double" else _ordered_sum(terms)
        rescale = self.rescale(step, "acc", "c")
        return f"""static void {self.fname(step)}({params}, {y.ctype} *y)
{{
    int32_t c, k;
    for (c = 0; c < {chans}; ++c) {{
        for (k = 0; k < {plane}; ++k) {{
            const int32_t e = c * {plane} + k;
            const {acc} acc = {total};
            y[e] = {rescale};
        }}
    }}
}}
"""

    def pool(self, step: Step, average: bool) -> str:
        m = step.module
        x, y = step.inputs[0], step.output
        g = pool_geometry(m)
        c, h, w = x.shape
        _, oh, ow = y.shape
        zero = m.input_zero if average else 0
        if average:  # the window sum of q - z (IntAvgPool2d's exact flavour); padding adds real zeros
            init, combine = f"{y.ctype} best = 0;", f"best = ({y.ctype})(best + ((int32_t)v - {zero}));"
        else:  # the largest level of the window's valid positions (max-pooling pads with -infinity)
            init, combine = f"{y.ctype} best = 0;\n                int32_t seen = 0;", \
                "if (!seen || v > best) best = v;\n                        seen = 1;"
        return f"""static void {self.fname(step)}(const {x.ctype} *x, {y.ctype} *y)
{{
    int32_t ch, oy, ox, ky, kx;
    for (ch = 0; ch < {c}; ++ch) {{
        for (oy = 0; oy < {oh}; ++oy) {{
            for (ox = 0; ox < {ow}; ++ox) {{
                {init}
                for (ky = 0; ky < {g['KH']}; ++ky) {{
                    const int32_t iy = oy * {g['SY']} - {g['PY']} + ky * {g['DY']};
                    if (iy < 0 || iy >= {h}) continue;
                    for (kx = 0; kx < {g['KW']}; ++kx) {{
                        const int32_t ix = ox * {g['SX']} - {g['PX']} + kx * {g['DX']};
                        {x.ctype} v;
                        if (ix < 0 || ix >= {w}) continue;
                        v = x[((int32_t)ch * {h} + iy) * {w} + ix];
                        {combine}
                    }}
                }}
                y[((int32_t)ch * {oh} + oy) * {ow} + ox] = best;
            }}
        }}
    }}
}}
"""

    def fractional_pool(self, step: Step) -> str:
        """The largest level over each fixed region: tables of the rows and columns every output reads."""
        x, y = step.inputs[0], step.output
        rows, cols = step.module.rows.numpy(), step.module.cols.numpy()
        c, h, w = x.shape
        _, oh, ow = y.shape
        rows_name = self._const(step, "tables", "uint16_t", "rows", rows.reshape(-1))
        cols_name = self._const(step, "tables", "uint16_t", "cols", cols.reshape(-1))
        return f"""static void {self.fname(step)}(const {x.ctype} *x, {y.ctype} *y)
{{
    const uint16_t *rows = {rows_name}, *cols = {cols_name};
    int32_t ch, oy, ox, ky, kx;
    for (ch = 0; ch < {c}; ++ch) {{
        for (oy = 0; oy < {oh}; ++oy) {{
            for (ox = 0; ox < {ow}; ++ox) {{
                {y.ctype} best = x[((int32_t)ch * {h} + rows[oy * {rows.shape[1]}]) * {w} + cols[ox * {cols.shape[1]}]];
                for (ky = 0; ky < {rows.shape[1]}; ++ky) {{
                    const int32_t iy = rows[oy * {rows.shape[1]} + ky];
                    for (kx = 0; kx < {cols.shape[1]}; ++kx) {{
                        const {x.ctype} v = x[((int32_t)ch * {h} + iy) * {w} + cols[ox * {cols.shape[1]} + kx]];
                        if (v > best) best = v;
                    }}
                }}
                y[((int32_t)ch * {oh} + oy) * {ow} + ox] = best;
            }}
        }}
    }}
}}
"""

    def fname(self, step: Step) -> str:
        return f"step{self.low.steps.index(step)}_{cname(step.name)}"

    def step(self, step: Step) -> str:
        if step.kind == "conv":
            return self.conv(step)
        if step.kind == "fc":
            x = step.inputs[0]
            return self.fc(step, x.count, step.output.count)
        if step.kind == "add":
            return self.add(step)
        if step.kind == "fmp":
            return self.fractional_pool(step)
        return self.pool(step, step.kind == "avgpool")

    # ------------------------------------------------------------------------------------- files

    def header(self, notes: list[str]) -> str:
        x, y = self.low.input, self.low.output
        c, h, w = x.shape
        float_out = y.ctype == "double"
        lines = "\n".join(f"   {line}" for line in notes)
        return f"""/* qatrun: the integer network {self.title}, as C99. Generated by qatrun; do not edit.

   qatrun_run(input, output): input is the image's pixels p (uint8, x = p / {self.low.input_steps} for the trained
   network), output the network's scores. Layout: CHW for the input, every activation and the output
   (channel planes, rows of width W): the order of torch's tensors, so that a reshape is free.
{lines} */
#ifndef QATRUN_NETWORK_H
#define QATRUN_NETWORK_H

#include <stdint.h>

#define QATRUN_INPUT_C {c}
#define QATRUN_INPUT_H {h}
#define QATRUN_INPUT_W {w}
#define QATRUN_INPUT_SIZE {x.count}
#define QATRUN_OUTPUT_SIZE {y.count}
#define QATRUN_ARENA_BYTES {self.arena}
#define QATRUN_OUTPUT_IS_FLOAT {1 if float_out else 0}

typedef {y.ctype} qatrun_output_t;

void qatrun_run(const uint8_t input[QATRUN_INPUT_SIZE], qatrun_output_t output[QATRUN_OUTPUT_SIZE]);

#ifdef QATRUN_DEBUG
/* Called after every layer with its output (defined by the caller: qatrun_test.c writes them to a file). */
void qatrun_debug_layer(int step, const void *data, uint32_t bytes);
#define QATRUN_LAYER(step, data, bytes) qatrun_debug_layer((step), (const void *)(data), (bytes))
#else
#define QATRUN_LAYER(step, data, bytes) ((void)0)
#endif

#endif
"""

    def source(self) -> str:
        bodies = [self.step(step) for step in self.low.steps]
        calls = []
        for k, step in enumerate(self.low.steps):
            args = [self.pointer(t, True) for t in step.inputs] + [self.pointer(step.output, False)]
            calls.append(f"    {self.fname(step)}({', '.join(args)});")
            calls.append(f"    QATRUN_LAYER({k}, {self.pointer(step.output, True)}, {step.output.nbytes}u);")
        unpack = UNPACK if any(s.packed is not None and s.packed.bits <= 8 for s in self.low.steps) else ""
        arena = max(self.arena, 1)
        return f"""/* qatrun: the integer network {self.title}. Generated by qatrun; do not edit. */
#include <stdint.h>

#include "qatrun_network.h"
#include "qatrun_rescale.h"

/* The activations: one arena, each layer's output at the offset the memory plan gave it. */
static union {{
    uint8_t bytes[{arena}];
    int64_t align;
}} qatrun_arena;

{unpack}
{"".join(self.consts)}
{"".join(bodies)}
void qatrun_run(const uint8_t input[QATRUN_INPUT_SIZE], qatrun_output_t output[QATRUN_OUTPUT_SIZE])
{{
{chr(10).join(calls)}
}}
"""


BAND_BYTES = 1024  # the largest accumulator band of a convolution (stack)


def band_rows(used: int, pool: int, width: int, out_width: int, acc_bytes: int) -> int:
    """The rows of a convolution band: the most rows, a multiple of the pooling window dividing the rows
    used, whose accumulators fit :data:`BAND_BYTES` (at least one pooling window)."""
    best = pool
    for rows in range(pool, used + 1, pool):
        if used % rows == 0 and ((rows - 1) * width + out_width) * acc_bytes <= BAND_BYTES:
            best = rows
    return best


def _ordered_sum(terms: list[str]) -> str:
    """``((t0 + t1) + t2) ...``: the order torch sums a stack over its first dimension."""
    total = terms[0]
    for t in terms[1:]:
        total = f"({total} + {t})"
    return total


UNPACK = r"""/* dst[i] = base + step u_i for the count values u_i of `bits` bits stored LSB first from bit `bit`. */
static inline void qatrun_unpack(const uint8_t *src, uint32_t bit, int32_t count, int32_t bits, int32_t base,
                                 int32_t step, int16_t *dst)
{
    const uint32_t mask = (1u << bits) - 1u;
    int32_t i;
    if (bits == 8 && bit % 8u == 0) {  /* whole bytes */
        for (i = 0; i < count; ++i) dst[i] = (int16_t)(base + step * (int32_t)src[(bit >> 3) + (uint32_t)i]);
        return;
    }
    if (bits == 4 && bit % 8u == 0) {  /* nibbles, low first */
        const uint8_t *p = src + (bit >> 3);
        for (i = 0; i + 1 < count; i += 2, ++p) {
            dst[i] = (int16_t)(base + step * (int32_t)(*p & 15u));
            dst[i + 1] = (int16_t)(base + step * (int32_t)(*p >> 4));
        }
        if (i < count) dst[i] = (int16_t)(base + step * (int32_t)(*p & 15u));
        return;
    }
    for (i = 0; i < count; ++i) {
        const uint32_t byte = bit >> 3, shift = bit & 7u;
        uint32_t v = (uint32_t)src[byte] >> shift;
        if (shift + (uint32_t)bits > 8u) v |= (uint32_t)src[byte + 1u] << (8u - shift);
        dst[i] = (int16_t)(base + step * (int32_t)(v & mask));
        bit += (uint32_t)bits;
    }
}
"""
