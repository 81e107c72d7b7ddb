"""Normalize and LRN cells against plain references computed here (atol=0 where the formula is the same)."""

from __future__ import annotations

import pytest
import torch

NET = """[norm]
Input=sp
Type=Normalize
NbOutputs=3
Norm={norm}
"""


def l_norm_reference(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Each position's channel vector divided by its norm, position by position (0 where the norm is 0)."""
    y = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                v = x[n, :, i, j]
                size = v.abs().sum() if norm == "L1" else v.square().sum().sqrt()
                if size > 0:
                    y[n, :, i, j] = v / size
    return y


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_normalize_divides_each_channel_vector_by_its_norm(build_net, norm: str) -> None:
    _, gm = build_net(NET.format(norm=norm), shape=(3, 4, 5))
    x = torch.randn(2, 3, 4, 5)
    x[0, :, 1, 2] = 0.0  # a zero vector stays zero
    y = gm(x)
    assert torch.equal(y, l_norm_reference(x, norm))
    assert gm.cells["norm"].out_shape == (3, 4, 5)


def test_normalize_of_an_fc_output_takes_the_whole_vector(build_net) -> None:
    text = "[fc]\nInput=sp\nType=Fc\nNbOutputs=6\n[norm]\nInput=fc\nType=Normalize\nNbOutputs=6\nNorm=L2\n"
    _, gm = build_net(text, shape=(1, 4, 4))
    x = torch.randn(3, 1, 4, 4)
    y = gm(x)
    fc = gm.get_submodule("fc")(x.flatten(1))
    assert torch.equal(y, fc / fc.square().sum(dim=1, keepdim=True).sqrt())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (NET.format(norm="L3"), 'test.ini:5: [norm] Norm: expected one of L1, L2, found "L3"'),
        (NET.replace("Norm={norm}\n", ""), "test.ini:1: [norm] Norm: required key is missing"),
        (NET.format(norm="L2").replace("NbOutputs=3", "NbOutputs=4"),
         "test.ini:4: [norm] NbOutputs: Normalize keeps the number of channels: NbOutputs must equal the number of "
         "input channels (3), found 4"),
    ],
    ids=["bad-norm", "no-norm", "outputs"],
)
def test_normalize_errors(build_error, text: str, message: str) -> None:
    assert build_error(text, (3, 4, 4)) == message


def lrn_reference(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """x[c] / (k + alpha / size * sum of x^2 over the channels c - size // 2 .. c + (size - 1) // 2) ^ beta."""
    y = torch.empty_like(x)
    channels = x.shape[1]
    for c in range(channels):
        low, high = max(0, c - size // 2), min(channels, c + (size - 1) // 2 + 1)
        y[:, c] = x[:, c] / (k + alpha / size * x[:, low:high].square().sum(dim=1)) ** beta
    return y


def test_lrn_against_the_formula(build_net) -> None:
    text = ("[lrn]\nInput=sp\nType=LRN\nNbOutputs=7\nConfigSection=lrn.config\n"
            "[lrn.config]\nN=3\nAlpha=0.5\nBeta=0.75\nK=1.5\n")
    _, gm = build_net(text, shape=(7, 3, 3))
    x = torch.randn(2, 7, 3, 3, dtype=torch.float64)
    y = gm.double()(x)
    assert torch.allclose(y, lrn_reference(x, 3, 0.5, 0.75, 1.5), rtol=1e-12, atol=0)
    assert gm.cells["lrn"].params == {"N": 3, "Alpha": 0.5, "Beta": 0.75, "K": 1.5}


def test_lrn_defaults_are_n2d2s(build_net) -> None:
    _, gm = build_net("[lrn]\nInput=sp\nType=LRN\nNbOutputs=6\n", shape=(6, 2, 2))
    assert gm.cells["lrn"].params == {"N": 5, "Alpha": 1e-4, "Beta": 0.75, "K": 2.0}
