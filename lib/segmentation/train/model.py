"""The models and their on-disk form (torch only; nothing here knows about Spark): the MLP autoencoder
over user features, its IDEC refinement (the autoencoder with trainable cluster centres), and the GRU
sequence encoder over each user's recent events."""

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
    kind: str = "autoencoder"  # autoencoder | sequence
    cardinalities: tuple[int, ...] = ()  # sequence: the codes of each token field (0 is padding)
    field_dim: int = 8  # sequence: each token field's embedding size
    inputs: tuple[int, ...] = ()  # sequence: the token fields the encoder reads (by index; all when empty)


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


class SequenceEncoder(nn.Module):
    """A user's recent events → one unit-length vector. Rows arrive flat, as the feeders give every
    table's rows: `max_events` x fields integer codes (0: padding after the last event). Each field's
    code is embedded, the events' vectors run through a GRU in time order, and the last event's
    hidden state is projected and normalized (the contrastive loss compares directions, so k-means
    clusters them on the sphere it trained on)."""

    def __init__(
        self,
        cardinalities: tuple[int, ...],
        field_dim: int,
        hidden: int,
        embedding_dim: int,
        inputs: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.fields = len(cardinalities)
        self.inputs = tuple(inputs) or tuple(range(self.fields))
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinalities[i] + 1, field_dim, padding_idx=0) for i in self.inputs
        )
        self.gru = nn.GRU(len(self.inputs) * field_dim, hidden, batch_first=True)
        self.project = nn.Linear(hidden, embedding_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        codes = x.reshape(len(x), -1, self.fields).long()
        lengths = (codes[:, :, 0] > 0).sum(dim=1).clamp_min(1)
        steps = torch.cat(
            [embed(codes[:, :, i]) for i, embed in zip(self.inputs, self.embeddings, strict=True)], dim=2
        )
        packed = nn.utils.rnn.pack_padded_sequence(
            steps, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, last = self.gru(packed)
        return nn.functional.normalize(self.project(last[-1]), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)


def soft_assign(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Q: each row's Student-t (one degree of freedom) similarity to each centre, normalized per row."""
    q = 1.0 / (1.0 + torch.cdist(z, centres) ** 2)
    return q / q.sum(dim=1, keepdim=True)


def target_distribution(q: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """P: Q squared and divided by each cluster's soft size, normalized per row. Confident assignments
    gain weight, and large clusters cannot swallow small ones by size alone."""
    p = q**2 / frequencies.clamp_min(1e-12)
    return p / p.sum(dim=1, keepdim=True)


class Refined(nn.Module):
    """An autoencoder and cluster centres in its embedding, trained together (IDEC). `forward` gives the
    reconstruction and the soft assignment, so one DDP module carries both."""

    def __init__(self, autoencoder: Autoencoder, centres: torch.Tensor) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.centres = nn.Parameter(centres.clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.autoencoder.encode(x)
        return self.autoencoder.decoder(z), soft_assign(z, self.centres)


def _mlp(dims: list[int], activation: str, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:  # no activation on the embedding or the reconstruction
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def build(spec: ModelSpec) -> Autoencoder | SequenceEncoder:
    if spec.kind == "sequence":
        return SequenceEncoder(
            tuple(spec.cardinalities), spec.field_dim, spec.hidden_sizes[0], spec.embedding_dim, spec.inputs
        )
    return Autoencoder(
        spec.input_dim, tuple(spec.hidden_sizes), spec.embedding_dim, spec.activation, spec.dropout
    )


def save(
    model: Autoencoder | Refined | SequenceEncoder, spec: ModelSpec, path: Path, scaling: dict | None = None
) -> None:
    """Atomically write weights, spec and the scaling statistics the inputs were prepared with
    (plain tensors, lists and numbers: loadable with weights_only). A refined model is saved as its
    autoencoder, which every reader of models loads, plus its centres."""
    spec_dict = asdict(spec)
    spec_dict["hidden_sizes"] = list(spec.hidden_sizes)
    spec_dict["feature_names"] = list(spec.feature_names)
    spec_dict["cardinalities"] = list(spec.cardinalities)
    spec_dict["inputs"] = list(spec.inputs)
    autoencoder = model.autoencoder if isinstance(model, Refined) else model
    blob = {"state_dict": autoencoder.state_dict(), "spec": spec_dict, "scaling": scaling or {}}
    if isinstance(model, Refined):
        blob["centres"] = model.centres.detach().cpu().clone()
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load_centres(path: Path) -> torch.Tensor | None:
    """The cluster centres saved with a refined model (None for a plain autoencoder)."""
    return torch.load(path, map_location="cpu", weights_only=True).get("centres")


def load_scaling(path: Path) -> dict:
    """The scaling statistics saved with a model (empty for a model saved without them)."""
    return torch.load(path, map_location="cpu", weights_only=True).get("scaling", {})


def load(path: Path) -> tuple[Autoencoder | SequenceEncoder, ModelSpec]:
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
        kind=str(raw.get("kind", "autoencoder")),
        cardinalities=tuple(int(c) for c in raw.get("cardinalities", ())),
        field_dim=int(raw.get("field_dim", 8)),
        inputs=tuple(int(i) for i in raw.get("inputs", ())),
    )
    model = build(spec)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, spec
