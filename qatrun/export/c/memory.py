"""The static memory plan of a C export: every activation at a fixed offset of one arena.

A tensor lives from the step that writes it to the last step that reads it (a step's inputs and output are
alive together: no layer writes over what it reads). Two tensors may share bytes when their lifetimes do
not overlap. The plan places the tensors one by one, the largest first (ties: the earliest), each at the
lowest offset, aligned to its element size, that overlaps no tensor already placed and alive at the same
time (first fit over the lifetime, as N2D2's ``OptimizeMaxLifetimeMaxSizeFirst`` does over its memory
spaces). The network's input and output stay in the caller's buffers. The arena is the largest end of a
placement.
"""

from __future__ import annotations

from pathlib import Path

from qatrun.export.c.lower import CTensor, Lowered


def _overlap(a: CTensor, b: CTensor) -> bool:
    return a.first <= b.last and b.first <= a.last


def plan(low: Lowered) -> int:
    """Sets ``offset`` of every arena tensor of ``low``; returns the arena size in bytes."""
    arena = [t for t in dict.fromkeys(low.tensors) if t.place == "arena"]
    for t in arena:
        t.last = max(t.last, t.first)
    placed: list[CTensor] = []
    for t in sorted(arena, key=lambda t: (-t.nbytes, t.first)):
        busy = sorted((p.offset, p.offset + p.nbytes) for p in placed if _overlap(p, t))
        offset = 0
        for start, end in busy:
            if offset + t.nbytes <= start:
                break
            offset = max(offset, _aligned(end, t.align))
        t.offset = offset
        placed.append(t)
    return max((t.offset + t.nbytes for t in placed), default=0)


def _aligned(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def check_plan(low: Lowered) -> None:
    """Asserts that no two tensors alive together share a byte (an internal invariant)."""
    arena = [t for t in dict.fromkeys(low.tensors) if t.place == "arena"]
    for i, a in enumerate(arena):
        assert a.offset % a.align == 0, a.name
        for b in arena[i + 1:]:
            if _overlap(a, b):
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a.name, b.name)


def map_lines(low: Lowered, arena: int) -> list[str]:
    """The memory map as text: per tensor, its bytes, offsets and lifetime (in steps)."""
    lines = [f"arena: {arena} bytes; input {low.input.nbytes} bytes and output {low.output.nbytes} bytes in the "
             "caller's buffers", f"{'tensor':<24} {'bytes':>7} {'offset':>8} {'end':>8}  steps"]
    for t in sorted(dict.fromkeys(low.tensors), key=lambda t: (t.first, t.name)):
        where = (f"{t.offset:>8} {t.offset + t.nbytes:>8}" if t.place == "arena"
                 else f"{'(' + t.place + ')':>17}")
        lines.append(f"{t.name:<24} {t.nbytes:>7} {where}  {t.first} to {t.last}")
    return lines


def draw(low: Lowered, arena: int, path: Path, title: str) -> None:
    """The memory map as a PNG: each arena tensor a box, offset against the step it lives in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(low.steps)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.get_cmap("tab20")
    for k, t in enumerate(t for t in dict.fromkeys(low.tensors) if t.place == "arena"):
        ax.add_patch(plt.Rectangle((t.first - 0.45, t.offset), t.last - t.first + 0.9, t.nbytes,
                                   facecolor=colours(k % 20), edgecolor="black", linewidth=0.5))
        ax.text((t.first + t.last) / 2, t.offset + t.nbytes / 2, t.name, ha="center", va="center", fontsize=7)
    ax.axhline(arena, color="red", linewidth=1)
    ax.text(steps - 0.5, arena, f"arena {arena} B", color="red", ha="right", va="bottom", fontsize=8)
    ax.set_xlim(-0.6, steps - 0.4)
    ax.set_ylim(0, max(arena, 1) * 1.12)
    ax.set_xticks(range(steps))
    ax.set_xticklabels([s.name for s in low.steps], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("byte offset in the arena")
    ax.set_title(f"{title}: activation memory ({arena} bytes)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
