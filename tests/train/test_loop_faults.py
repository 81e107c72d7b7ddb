"""The loop's refusals, in process: a diverging loss, a damaged state, a state of another network."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from qatrun.errors import RunError
from qatrun.train.loop import Diverged, Progress, check_same_network, learn, load_state, save_state, state_seed
from tests.train.test_loop import TinyProvider, _config, _setup


class PoisonedProvider(TinyProvider):
    """TinyProvider whose Learn batch ``at = (epoch, batch)`` holds a ``nan`` pixel."""

    def __init__(self, at: tuple[int, int]) -> None:
        super().__init__()
        self.at = at

    def loader(self, partition: str, shuffle: bool, batch_size: int | None = None, rank: int = 0, world: int = 1,
               epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k, (x, y) in enumerate(super().loader(partition, shuffle, batch_size, rank, world, epoch)):
            if partition == "Learn" and (epoch, k) == self.at:
                x = x.clone()
                x[0, 0, 0, 0] = math.nan
            yield x, y


def test_nan_loss_stops_before_the_validation_save(tmp_path: Path) -> None:
    model, opt, io = _setup()
    with pytest.raises(Diverged, match=r"the loss is nan at epoch 2, step 9 \(batch 3 of the epoch\)"):
        learn(model, PoisonedProvider(at=(1, 2)), opt, _config(tmp_path), io, say=lambda _: None)
    saved = tmp_path / "weights_validation"
    for path in saved.iterdir():  # the epoch-1 best, written before the bad step, all finite
        assert torch.isfinite(torch.tensor([float(v) for v in path.read_text().split()])).all(), path


def _state(tmp_path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> Path:
    folder = tmp_path / "net_state"
    save_state(folder, model, opt, Progress(step=3), seed=41)
    return folder


def test_state_seed_and_checksum(tmp_path: Path) -> None:
    model, opt, _ = _setup()
    folder = _state(tmp_path, model, opt)
    assert state_seed(folder) == 41
    data = bytearray((folder / "state.pt").read_bytes())
    data[len(data) // 2] ^= 1
    (folder / "state.pt").write_bytes(bytes(data))
    with pytest.raises(RunError, match=r"state.pt: the file does not match its checksum in .*state.pt.sha256"):
        load_state(folder)


@pytest.mark.parametrize(("change", "message"), [
    ("shape", "tensor fc.weight is 4x96 there, 5x96 here"),
    ("missing", "it has no tensor extra.weight (2x2 here)"),
])
def test_state_of_another_network_names_the_tensor(change: str, message: str, tmp_path: Path) -> None:
    model, opt, _ = _setup()
    folder = _state(tmp_path, model, opt)
    other, _, _ = _setup()
    if change == "shape":
        other.fc = nn.Linear(96, 5)
    else:
        other.extra = nn.Linear(2, 2, bias=False)
    with pytest.raises(RunError, match="was saved by another network: " + re.escape(message)):
        check_same_network(load_state(folder)["model"], other, folder / "state.pt")
    with pytest.raises(RunError, match="was saved by another network"):
        learn(other, TinyProvider(), opt, _config(tmp_path, seed=41), resume=folder, say=lambda _: None)
