"""Databases, transformations and the stimuli provider ([sp]/[env]) -> batches of tensors.

Use::

    spec = DataSpec.from_doc(doc)        # reads and checks every data key; no data read
    spec.input_shape, spec.batch_size    # (C, H, W), BatchSize
    provider = spec.open(seed)           # loads, partitions, caches; injects [sp]_EpochSize
    for x, y in provider.loader("Learn", shuffle=True, epoch=e):
        ...                              # x float32 (N, C, H, W), y int64 (N,)
"""

from __future__ import annotations

from qatrun.data.databases import DATABASES, PARTITIONS, Database, Stimuli
from qatrun.data.provider import DataSpec, Loader, Provider
from qatrun.data.resize import resize_bilinear
from qatrun.data.transforms import TRANSFORMATIONS, Transformation

__all__ = [
    "DATABASES",
    "PARTITIONS",
    "TRANSFORMATIONS",
    "DataSpec",
    "Database",
    "Loader",
    "Provider",
    "Stimuli",
    "Transformation",
    "resize_bilinear",
]
