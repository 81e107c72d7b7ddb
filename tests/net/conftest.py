"""Fixtures of the net tests: build a network from INI text, or get the error it raises."""

from __future__ import annotations

import re
from typing import Callable

import pytest
import torch
from torch import fx

from qatrun.errors import ConfigError
from qatrun.ini import Document, loads
from qatrun.net import build

Builder = Callable[..., tuple[Document, fx.GraphModule]]


def with_target(text: str) -> str:
    """Appends ``[<last layer>.Target]`` at the end (line numbers of the text stay as written)."""
    last = current = None
    for line in text.splitlines():
        header = re.match(r"\[([^\]]+)\]", line.strip())
        if header:
            current = header.group(1)
        elif line.strip().startswith("Input="):
            last = current
    return f"{text}\n[{last}.Target]\n"


@pytest.fixture
def build_net() -> Builder:
    """``build_net(text, shape=(1, 8, 8), target=True)`` -> (document, GraphModule); seeds torch first."""

    def run(text: str, shape: tuple[int, int, int] = (1, 8, 8), target: bool = True):
        torch.manual_seed(0)
        doc = loads(with_target(text) if target else text, "test.ini")
        return doc, build(doc, shape)

    return run


@pytest.fixture
def build_error() -> Callable[..., str]:
    """``build_error(text, shape=(1, 8, 8), target=True)`` -> the ConfigError message (fails if none)."""

    def run(text: str, shape: tuple[int, int, int] = (1, 8, 8), target: bool = True) -> str:
        with pytest.raises(ConfigError) as info:
            build(loads(with_target(text) if target else text, "test.ini"), shape)
        return str(info.value)

    return run
