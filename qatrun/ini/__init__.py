"""The N2D2 INI dialect: parsing, lazy resolution, templates, typed reads and strict key checking.

Standard library only (layer 0). Typical use::

    from qatrun.ini import Key, load

    NB_OUTPUTS = Key("NbOutputs", "int", doc="number of output channels")

    doc = load("models/LeNet.ini", overrides=["[conv1]NbOutputs=32"])
    conv1 = doc.section("conv1")
    n = conv1.read(NB_OUTPUTS)          # typed, consumed, errors name path:line
    params = doc.params(conv1)          # the ConfigSection parameter map
    ...
    doc.check_strict()                  # unknown keys are errors (did-you-mean)

Full dialect: reference/n2d2.md section 1; design.md section 3.
"""

from __future__ import annotations

from qatrun.ini.diagnostics import warn
from qatrun.ini.document import Document, Params, Section
from qatrun.ini.keys import KINDS, REQUIRED, Key, expand_env
from qatrun.ini.loader import load, loads

__all__ = [
    "Document",
    "KINDS",
    "Key",
    "Params",
    "REQUIRED",
    "Section",
    "expand_env",
    "load",
    "loads",
    "warn",
]
