"""A calibration on disk: ``calibration/`` of the run folder, read back by ``-calib-reload``.

    calibration/calibration.json   the options, stimuli, partition, weights digest and every point
                                   (cell, observed module, grid, range, histogram edges, threshold)
    calibration/histograms.npz     each point's bin counts (int64), by point name
    calibration/thresholds.dat     the same table as the console, for people
    calibration/<point>.png        the histogram (log counts) with the range and the chosen threshold

Written atomically (:func:`qatrun.files.atomic_folder`): an interrupted write leaves the previous folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from qatrun.calib.calibrate import Calibration, CalibOptions, Point
from qatrun.calib.histogram import Histogram
from qatrun.errors import DataError, RunError
from qatrun.files import atomic_folder

FOLDER = "calibration"
META = "calibration.json"
COUNTS = "histograms.npz"
TABLE = "thresholds.dat"
FORMAT = 1


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def save(calibration: Calibration, folder: str | Path, plots: bool = True) -> Path:
    """Writes the calibration into ``folder`` (replacing it); returns the folder."""
    folder = Path(folder)
    points = []
    counts = {}
    for k, p in enumerate(calibration.points):
        entry = {key: value for key, value in asdict(p).items() if key != "histogram"}
        if p.histogram is not None:
            entry["histogram"] = {"lo": p.histogram.lo, "hi": p.histogram.hi, "key": f"h{k}"}
            counts[f"h{k}"] = p.histogram.counts
        points.append(entry)
    meta = {
        "format": FORMAT, "kind": calibration.kind, "stimuli": calibration.stimuli,
        "partition": calibration.partition, "digest": calibration.digest,
        "options": asdict(calibration.options), "weight_thresholds": calibration.weight_thresholds,
        "points": points,
    }
    try:
        with atomic_folder(folder) as tmp:
            (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
            np.savez_compressed(tmp / COUNTS, **counts)
            (tmp / TABLE).write_text(calibration.table() + "\n")
            if plots:
                _plot(calibration, tmp)
    except OSError as err:
        raise RunError(f"{folder}: cannot write the calibration ({err.strerror or err})") from err
    return folder


def load(folder: str | Path) -> Calibration:
    """Reads a calibration written by :func:`save`.

    Raises:
        DataError: no calibration there, or files that do not hold one (naming the file).
    """
    folder = Path(folder)
    meta_path, counts_path = folder / META, folder / COUNTS
    if not meta_path.is_file() or not counts_path.is_file():
        raise DataError(f"-calib-reload: no calibration in {folder}/ (it needs {META} and {COUNTS}); "
                        "calibrate first with -calib N")
    try:
        meta = json.loads(meta_path.read_text())
        with np.load(counts_path) as npz:
            counts = {key: npz[key] for key in npz.files}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
        points = []
        for entry in meta["points"]:
            h = entry.pop("histogram", None)
            point = Point(**entry)
            if h is not None:
                bins = np.asarray(counts[h["key"]], dtype=np.int64)
                if bins.ndim != 1 or bins.size == 0 or (bins < 0).any():
                    raise ValueError(f"histogram {h['key']} of {point.name} is not a list of counts")
                point.histogram = Histogram(float(h["lo"]), float(h["hi"]), bins)
            points.append(point)
        return Calibration(CalibOptions(**meta["options"]), int(meta["stimuli"]), str(meta["partition"]),
                           str(meta["digest"]), points, str(meta["kind"]),
                           {str(k): float(v) for k, v in meta["weight_thresholds"].items()})
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise DataError(f"{meta_path}: not a calibration qatrun can read ({err})") from err


def _plot(calibration: Calibration, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    for p in calibration.points:
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        if p.histogram is not None:
            h = p.histogram
            edges = h.lo + np.arange(h.bins + 1) * h.width
            ax.stairs(np.maximum(h.counts, 0.5), edges, fill=True, color="#4878a8", baseline=0.5)
            ax.set_yscale("log")
        ax.axvline(p.threshold, color="#c0392b", linewidth=1.2, label=f"threshold {p.threshold:.4g}")
        if p.signed:
            ax.axvline(-p.threshold, color="#c0392b", linewidth=1.2)
        ax.axvline(p.hi, color="#777777", linestyle="--", linewidth=0.8, label=f"max {p.hi:.4g}")
        mode = calibration.options.act_clipping if p.clip else "max-abs"
        ax.set_title(f"{p.name} ({p.observed}): {mode}, R={p.steps}", fontsize=9)
        ax.set_xlabel("value")
        ax.set_ylabel("count")
        ax.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        fig.savefig(folder / f"{_file_stem(p.name)}.png")
        plt.close(fig)
