"""qatrun: quantization-aware training of CNNs from N2D2-style INI files, down to an integer-only network.

The public API (see :mod:`qatrun.network`)::

    import qatrun

    network = qatrun.load("models/LeNet-QAT.ini")     # a Network: built and checked, no data read
    data = network.open_data()
    network.learn(data, epochs=1)
    integer = network.fuse()                          # an IntegerNetwork
    integer.verify(data).ok
    float_network.calibrate(data, options=qatrun.CalibOptions(bits=8))   # post-training quantization
    qatrun.quantize(my_module, {"conv1": qatrun.quant.SATWeightSpec(range=15)})   # your own network

The names below load torch on first use, so that ``import qatrun`` (and ``qatrun -h``) stays quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "load": "qatrun.network",
    "quantize": "qatrun.network",
    "integerize": "qatrun.network",
    "test_onnx": "qatrun.network",
    "quant_plans": "qatrun.network",
    "Network": "qatrun.network",
    "IntegerNetwork": "qatrun.network",
    "Session": "qatrun.train",
    "resolve_seed": "qatrun.train",
    "FuseOptions": "qatrun.fuse",
    "CalibOptions": "qatrun.calib",
    "QatrunError": "qatrun.errors",
}
_PACKAGES = ("calib", "data", "export", "fuse", "ini", "net", "quant", "recipe", "train", "options", "errors")

__all__ = sorted([*_API, *_PACKAGES, "__version__"])

if TYPE_CHECKING:
    from qatrun import calib, data, errors, export, fuse, ini, net, options, quant, recipe, train
    from qatrun.calib import CalibOptions
    from qatrun.errors import QatrunError
    from qatrun.fuse import FuseOptions
    from qatrun.network import IntegerNetwork, Network, integerize, load, quant_plans, quantize, test_onnx
    from qatrun.train import Session, resolve_seed


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in _PACKAGES:
        return importlib.import_module(f"qatrun.{name}")
    raise AttributeError(f"module 'qatrun' has no attribute {name!r}")
