"""The MLP autoencoder and its on-disk form (torch only; nothing here knows about Spark)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from segmentation.artifacts import atomic_write


@dataclass(frozen=True)
class ModelSpec:
    input_dim: int
    hidden_sizes: tuple[int, ...]
    embedding_dim: int
    feature_names: tuple[str, ...]
    version: str  # the training run id
    activation: str = "relu"
    dropout: float = 0.0


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class Autoencoder(nn.Module):
    def __init__(
        self,
        input_dim: int,
        hidden_sizes: tuple[int, ...],
        embedding_dim: int,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dims = [input_dim, *hidden_sizes, embedding_dim]
        self.encoder = _mlp(dims, activation, dropout)
        self.decoder = _mlp(dims[::-1], activation, dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _mlp(dims: list[int], activation: str, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:  # no activation on the embedding or the reconstruction
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def build(spec: ModelSpec) -> Autoencoder:
    return Autoencoder(
        spec.input_dim, tuple(spec.hidden_sizes), spec.embedding_dim, spec.activation, spec.dropout
    )


def save(model: Autoencoder, spec: ModelSpec, path: Path, scaling: dict | None = None) -> None:
    """Atomically write weights, spec and the scaling statistics the inputs were prepared with
    (plain tensors, lists and numbers: loadable with weights_only)."""
    spec_dict = asdict(spec)
    spec_dict["hidden_sizes"] = list(spec.hidden_sizes)
    spec_dict["feature_names"] = list(spec.feature_names)
    blob = {"state_dict": model.state_dict(), "spec": spec_dict, "scaling": scaling or {}}
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load_scaling(path: Path) -> dict:
    """The scaling statistics saved with a model (empty for a model saved without them)."""
    return torch.load(path, map_location="cpu", weights_only=True).get("scaling", {})


def load(path: Path) -> tuple[Autoencoder, ModelSpec]:
    """Load a model saved by `save`. weights_only=True: no arbitrary code runs from the file."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    raw = blob["spec"]
    spec = ModelSpec(
        input_dim=int(raw["input_dim"]),
        hidden_sizes=tuple(raw["hidden_sizes"]),
        embedding_dim=int(raw["embedding_dim"]),
        feature_names=tuple(raw["feature_names"]),
        version=str(raw["version"]),
        activation=str(raw.get("activation", "relu")),
        dropout=float(raw.get("dropout", 0.0)),
    )
    model = build(spec)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, spec
