"""A network the user wrote in PyTorch (not from an INI), quantized SAT W4A4 through the public API, trained
a few steps on real MNIST, fused and verified: the integer network must predict exactly what was trained."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qatrun
from qatrun import quant
from qatrun.data.databases import SHIPPED_MNIST
from qatrun.data.formats import read_idx_images, read_idx_labels
from qatrun.errors import ConfigError


class SmallCNN(nn.Module):
    """A plain CNN: conv-BN-ReLU twice with max-pooling, linear-BN-ReLU, a linear classifier. Input x = pixels / 255."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 5, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 4 * 4, 32, bias=False)
        self.bn3 = nn.BatchNorm1d(32)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc2(self.relu3(self.bn3(self.fc1(self.flatten(x)))))


def _mnist(name: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx_images(SHIPPED_MNIST / f"{name}-images-idx3-ubyte.gz")[:count]
    labels = read_idx_labels(SHIPPED_MNIST / f"{name}-labels-idx1-ubyte.gz")[:count]
    return images.float() / 255, labels


def _w4a4() -> dict[str, quant.QuantSpec]:
    """SAT W4A4, 8-bit first and last layers, as the LeNet recipe: the classifier, with no BatchNorm after
    it, scales its weights (SAT's ``ApplyScaling``); the activations clip at alpha = 6."""
    return {
        "conv1": quant.SATWeightSpec(range=255), "relu1": quant.SATActSpec(range=15, alpha=6.0),
        "conv2": quant.SATWeightSpec(range=15), "relu2": quant.SATActSpec(range=15, alpha=6.0),
        "fc1": quant.SATWeightSpec(range=15), "relu3": quant.SATActSpec(range=15, alpha=6.0),
        "fc2": quant.SATWeightSpec(range=255, apply_scaling=True),
    }


def test_own_network_quantized_trained_fused_verified() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    gm = qatrun.quantize(model, _w4a4(), kernels="eager")
    names = dict(gm.named_modules())
    assert isinstance(names["conv2"], quant.QuantizedWeightLayer)
    assert isinstance(names["relu2"], quant.QuantizedActivation)
    assert names["conv1"].weight is model.conv1.weight  # parameters shared, not copied

    x, y = _mnist("train", 2048)
    optimizer = torch.optim.SGD(gm.parameters(), lr=0.02, momentum=0.9)
    gm.train()
    losses = []
    for step in range(32):
        batch = slice(64 * step, 64 * (step + 1))
        loss = nn.functional.cross_entropy(gm(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-4:]) < sum(losses[:4])  # it learns

    integer = qatrun.integerize(gm)
    x_test, y_test = _mnist("t10k", 1000)
    batches = [(x_test[k:k + 250], y_test[k:k + 250]) for k in range(0, 1000, 250)]
    report = integer.verify(batches)
    assert report.ok, report
    assert report.differing_predictions == 0
    assert report.predictions == 1000
    levels = integer.module(x_test[:8])
    assert levels.dtype == torch.float64 or not levels.is_floating_point()
    fake = gm.eval()(x_test)
    accuracy = float((fake.argmax(1) == y_test).float().mean())
    assert accuracy > 0.8, accuracy  # 32 steps of 64 images: far above chance (0.1)


def test_a_name_that_is_no_module_is_an_error() -> None:
    with pytest.raises(ConfigError, match="conv9"):
        qatrun.quantize(SmallCNN(), {"conv9": quant.SATWeightSpec(range=15)}, kernels="eager")


def test_a_weight_spec_on_an_activation_is_an_error() -> None:
    with pytest.raises(ConfigError, match="relu1"):
        qatrun.quantize(SmallCNN(), {"relu1": quant.SATWeightSpec(range=15)}, kernels="eager")
