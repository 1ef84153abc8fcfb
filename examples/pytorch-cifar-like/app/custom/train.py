"""A PyTorch CNN on CIFAR-like data the script makes itself (PyTorch needed on the sites).

Each site draws 32x32 RGB images of 10 classes from class "prototypes" shared by all
sites plus per-site noise (seeded by the site name), so there is something federated to
learn without downloading a dataset. The script evaluates the received global model,
trains locally, streams the loss through a TensorBoard-style writer, and sends the new
weights. Weights travel as numpy arrays (``state_dict`` <-> ``.npz``), never pickled.

Try it locally (first round, no initial model):
    flare job run train --path examples/pytorch-cifar-like/app --output /tmp/update.npz
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np
import torch
from torch import nn

import flare_site.client as flare

CLASSES = 10


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_data(site: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    prototypes = np.random.default_rng(1234).normal(size=(CLASSES, 3, 32, 32)).astype(np.float32)
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    labels = rng.integers(0, CLASSES, size=n)
    images = prototypes[labels] + rng.normal(scale=1.5, size=(n, 3, 32, 32)).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(labels)


def to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def from_numpy(model: nn.Module, params: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()

    torch.manual_seed(0)
    flare.init()
    site = flare.get_site_name()
    x_train, y_train = make_data(site, 2000)
    x_val, y_val = make_data(site + "/val", 500)
    net = Net()
    writer = flare.SummaryWriter()
    step = 0
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        if received.params:
            from_numpy(net, received.params)
        accuracy = evaluate(net, x_val, y_val)
        if flare.is_evaluate():
            flare.send(flare.FLModel(metrics={"val_accuracy": accuracy}))
            continue
        optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
        net.train()
        for _ in range(args.epochs):
            order = torch.randperm(len(y_train))
            for start in range(0, len(order), args.batch_size):
                batch = order[start : start + args.batch_size]
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
                loss.backward()
                optimizer.step()
                writer.add_scalar("train_loss", float(loss), step)
                step += 1
        flare.send(
            flare.FLModel(
                params=to_numpy(net),
                params_type="FULL",
                metrics={"global_val_accuracy": accuracy},
                meta={"num_examples": len(y_train)},
            )
        )


if __name__ == "__main__":
    main()
