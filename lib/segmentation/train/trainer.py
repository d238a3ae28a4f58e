"""The distributed training function TorchDistributor runs in every process.

Spark-free: it imports torch itself, reads its shard through a feeder (`train_one_epoch` knows nothing
about where batches come from), and returns only small results. Every rank runs exactly
`spec.steps_per_epoch(world)` steps per epoch, so DDP never waits on a rank whose shard ran out.

After every epoch rank 0 writes a checkpoint (model, optimizer, scheduler, epoch, early-stopping state,
best weights) atomically; TorchDistributor does not restart failed ranks, so re-running the stage for
the same run resumes after the last completed epoch. Random draws (shuffling, dropout, input noise)
are seeded from (seed, rank, epoch), so a resumed run continues exactly as an uninterrupted one.

The same loop trains the autoencoder (objective `Reconstruction`), refines one with cluster centres
when the spec carries a `RefineSpec` (`ClusteringKL`, IDEC), and trains the sequence encoder when it
carries a `SequenceSpec` (`Contrastive`): only the model and the objective differ.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from segmentation.train.spec import TrainOutcome, TrainSpec

FEW_STEPS = 200  # fewer optimizer steps than this left embeddings far from converged on generated data

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a checkpoint carries beside the weights: where training stands and early stopping's memory."""

    epoch: int = 0
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_val: float = float("inf")
    bad_epochs: int = 0
    best_state: dict | None = None
    stopped_early: bool = False
    objective: dict = field(default_factory=dict)  # what the objective carries across epochs

    def record(
        self, epoch: int, train_loss: float, val_loss: float, state_dict: dict, patience: int, objective: dict
    ) -> None:
        self.epoch, self.objective = epoch, objective
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)
        if val_loss < self.best_val - 1e-7:
            self.best_val, self.bad_epochs = val_loss, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
        else:
            self.bad_epochs += 1
            self.stopped_early = 0 < patience <= self.bad_epochs


@dataclass
class Process:
    """This training process's place: its device, rank and world."""

    device: object
    rank: int
    world: int
    distributed: bool


def train(spec: TrainSpec) -> TrainOutcome:
    """Train the model `spec` describes (an autoencoder, its idec refinement or a sequence encoder);
    rank 0 writes it (the best epoch by validation loss; a refinement's last epoch)."""
    import torch

    from segmentation.train import model as model_io
    from segmentation.train.feeders import Feeder, FeedSpec, validation_rows

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    proc = start_process(spec.use_gpu)
    model_spec, net, optimizer, scheduler = build(spec, proc.device)
    checkpoint = Path(spec.checkpoint_path)
    state = restore_checkpoint(checkpoint, net, optimizer, scheduler)
    objective = make_objective(spec, state.objective, proc.device)
    if proc.rank == 0 and state.epoch:
        log.info("resuming from the checkpoint after epoch %d", state.epoch)
    ddp = _wrap(net, proc)

    feed = FeedSpec(
        tuple(spec.files),
        proc.rank,
        proc.world,
        spec.batch_size,
        spec.seed,
        spec.validation_share,
        spec.column,
    )
    held_out = torch.from_numpy(validation_rows(feed)).to(proc.device)
    feeder = Feeder(spec.feeder, feed, spec.cache_mb << 20)
    steps = spec.steps_per_epoch(proc.world)
    if proc.rank == 0 and state.epoch == 0:
        _log_plan(spec, proc, feeder, steps)

    launched_at = state.epoch
    epoch_seconds: list[float] = []  # this launch's epochs (steady throughput for the benchmark)
    while state.epoch < spec.epochs and not state.stopped_early:
        if spec.stop_after_epochs and state.epoch - launched_at >= spec.stop_after_epochs:
            break
        epoch = state.epoch + 1
        torch.manual_seed(spec.seed * 100_003 + proc.rank * 1009 + epoch)
        started = time.perf_counter()
        totals = torch.zeros(4, device=proc.device)  # train loss sum, train rows, val loss sum, val rows
        batches = feeder.epoch(epoch)
        totals[:2] = train_one_epoch(ddp, optimizer, batches, steps, objective, spec.grad_clip, proc.device)
        batches.close()
        scheduler.step()
        totals[2:] = validate(net, held_out, objective)
        if proc.distributed:
            torch.distributed.all_reduce(totals)  # every rank sees the same losses, makes the same decisions
        objective.end_epoch(proc.distributed)
        train_loss = float(totals[0] / totals[1])
        val_loss = float(totals[2] / totals[3]) if float(totals[3]) > 0 else train_loss
        state.record(epoch, train_loss, val_loss, net.state_dict(), spec.patience, objective.state())
        epoch_seconds.append(time.perf_counter() - started)
        if proc.rank == 0:
            log.info(
                "epoch %d/%d: train loss %.5f, validation loss %.5f, %.0f samples/s%s",
                epoch,
                spec.epochs,
                train_loss,
                val_loss,
                float(totals[1]) / max(epoch_seconds[-1], 1e-9),
                " (early stop)" if state.stopped_early else "",
            )
            save_checkpoint(checkpoint, net, optimizer, scheduler, state)

    finished = state.epoch >= spec.epochs or state.stopped_early
    if proc.rank == 0 and finished:
        # A refinement keeps its last epoch: its targets move every epoch, so the losses of different
        # epochs are measured against different targets and the lowest names no better model.
        if spec.refine is None:
            net.load_state_dict(state.best_state or net.state_dict())
        model_io.save(net.to("cpu"), model_spec, Path(spec.model_path), spec.scaling)
    return TrainOutcome(
        losses=state.train_loss,
        val_losses=state.val_loss,
        epochs_done=state.epoch,
        finished=finished,
        stopped_early=state.stopped_early,
        model_path=spec.model_path,
        world_size=proc.world,
        device=str(proc.device),
        feeder=feeder.name,
        feeder_cached=feeder.cached,
        epoch_seconds=epoch_seconds,
        batch_size=spec.batch_size,
        samples_per_epoch=steps * proc.world * spec.batch_size,
        processes=finish_process(proc),
    )


def build(spec: TrainSpec, device):
    """The model's spec, the network on `device` (the same initial weights on every rank), the optimizer
    and the learning-rate schedule."""
    import torch

    from segmentation.train import model as model_io

    sequence = spec.sequence
    model_spec = model_io.ModelSpec(
        input_dim=len(spec.feature_names) * (sequence.max_events if sequence else 1),
        hidden_sizes=tuple(spec.hidden_sizes),
        embedding_dim=spec.embedding_dim,
        feature_names=tuple(spec.feature_names),
        version=spec.version,
        activation=spec.activation,
        dropout=spec.dropout,
        kind="sequence" if sequence else "autoencoder",
        cardinalities=tuple(sequence.cardinalities) if sequence else (),
        field_dim=sequence.field_dim if sequence else 8,
        inputs=tuple(sequence.inputs) if sequence else (),
    )
    torch.manual_seed(spec.seed)
    net = model_io.build(model_spec)
    if spec.refine is not None:
        start, _ = model_io.load(Path(spec.refine.init_model))
        net.load_state_dict(start.state_dict())
        net = model_io.Refined(net, torch.tensor(spec.refine.centres, dtype=torch.float32))
    net = net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=spec.learning_rate)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs)
        if spec.lr_schedule == "cosine"
        else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    )
    return model_spec, net, optimizer, scheduler


class Reconstruction:
    """The autoencoder's objective: mean squared reconstruction error, of clean inputs from noisy ones
    when `noise_std` > 0 (while training only)."""

    def __init__(self, noise_std: float) -> None:
        self.noise_std = noise_std

    def __call__(self, model, x, training: bool):
        import torch

        noisy = x + self.noise_std * torch.randn_like(x) if training and self.noise_std > 0 else x
        return ((model(noisy) - x) ** 2).mean()

    def end_epoch(self, distributed: bool) -> None:
        """Nothing carries over."""

    def state(self) -> dict:
        return {}


class ClusteringKL:
    """IDEC's objective: reconstruction + `gamma` x KL(P || Q). The targets P divide by the clusters'
    soft sizes; DEC measures them over every user before each target update, here each epoch uses the
    sizes the previous epoch's training batches summed over every rank (the first epoch the sizes the
    launcher measured on its sample), so no extra pass over the data is needed."""

    def __init__(self, gamma: float, frequencies, device) -> None:
        import torch

        self.gamma = gamma
        self.frequencies = torch.as_tensor(frequencies, dtype=torch.float32, device=device)
        self.seen = torch.zeros_like(self.frequencies)

    def __call__(self, model, x, training: bool):
        from segmentation.train.model import target_distribution

        recon, q = model(x)
        q = q.clamp_min(1e-12)
        p = target_distribution(q.detach(), self.frequencies)
        if training:
            self.seen += q.detach().sum(dim=0)
        kl = (p * (p.log() - q.log())).sum(dim=1).mean()
        return ((recon - x) ** 2).mean() + self.gamma * kl

    def end_epoch(self, distributed: bool) -> None:
        import torch

        if distributed:
            torch.distributed.all_reduce(self.seen)
        if float(self.seen.sum()) > 0:
            self.frequencies = self.seen / self.seen.sum()
        self.seen = torch.zeros_like(self.frequencies)

    def state(self) -> dict:
        return {"frequencies": self.frequencies.cpu().tolist()}


class Contrastive:
    """Contrastive self-supervision in the spirit of CoLES (Babaev et al. 2022): every user's events in
    the batch are dealt at random into two disjoint halves, each kept in time order; both are embedded
    in one pass, and each half's partner is the positive among the batch's halves (InfoNCE at
    `temperature`, both directions). CoLES's overlapping crops let an encoder match a user's two crops
    by the events they share, and complementary crops by where one ends and the other starts (the
    position codes); two interleaved halves share neither, and both span the user's whole window, so
    what they can be matched on is what persists through a user's history: habits, rhythm, and the
    order of phases (browsing first, buying later). Under DDP the negatives are this rank's batch."""

    def __init__(self, sequence) -> None:
        self.fields = len(sequence.cardinalities)
        self.temperature = sequence.temperature

    def views(self, x):
        """Two disjoint random halves of each row's events, in time order, moved to the front of their
        own rows with padding after."""
        import torch

        codes = x.reshape(len(x), -1, self.fields)
        real = codes[:, :, 0] > 0
        first = real & (torch.rand(real.shape, device=x.device) < 0.5)
        return self.keep(codes, first), self.keep(codes, real & ~first)

    @staticmethod
    def keep(codes, chosen):
        """The `chosen` events of each row, in their order, flat, padded after."""
        import torch

        order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)
        out = codes.gather(1, order[:, :, None].expand(-1, -1, codes.shape[2]))
        kept = chosen.sum(dim=1)
        out = out * (torch.arange(codes.shape[1], device=codes.device)[None, :] < kept[:, None])[:, :, None]
        return out.reshape(len(codes), -1)

    def __call__(self, model, x, training: bool):
        import torch

        z = model(torch.cat(self.views(x)))
        a, b = z[: len(x)], z[len(x) :]
        logits = a @ b.T / self.temperature
        target = torch.arange(len(x), device=x.device)
        cross = torch.nn.functional.cross_entropy
        return (cross(logits, target) + cross(logits.T, target)) / 2

    def end_epoch(self, distributed: bool) -> None:
        """Nothing carries over."""

    def state(self) -> dict:
        return {}


def make_objective(spec: TrainSpec, saved: dict, device):
    """The objective `spec` trains for, continuing from a checkpoint's `saved` state."""
    if spec.sequence is not None:
        return Contrastive(spec.sequence)
    if spec.refine is None:
        return Reconstruction(spec.noise_std)
    return ClusteringKL(spec.refine.gamma, saved.get("frequencies", spec.refine.frequencies), device)


def train_one_epoch(ddp, optimizer, batches, steps: int, objective, grad_clip: float, device):
    """`steps` optimizer steps minimizing `objective` on batches from `batches` (float32 arrays);
    returns a tensor (loss sum, rows)."""
    import torch

    totals = torch.zeros(2, device=device)
    ddp.train()
    for _ in range(steps):
        x = torch.from_numpy(next(batches)).to(device)
        optimizer.zero_grad()
        loss = objective(ddp, x, training=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), grad_clip)
        optimizer.step()
        totals[0] += loss.detach() * len(x)
        totals[1] += len(x)
    return totals


def validate(net, held_out, objective):
    """(objective sum, rows) over this rank's validation rows."""
    import torch

    net.eval()
    with torch.no_grad():
        if not len(held_out):
            return torch.zeros(2, device=held_out.device)
        loss = objective(net, held_out, training=False) * len(held_out)
        return torch.stack([loss, torch.tensor(float(len(held_out)), device=held_out.device)])


def start_process(use_gpu: bool) -> Process:
    """Pick the device and join the process group TorchDistributor's launcher set up (if any)."""
    import torch
    import torch.distributed as dist

    from segmentation.errors import StageError

    if use_gpu and not torch.cuda.is_available():
        # Not a silent fall-back to CPU: a GPU cluster that trains on CPU looks healthy and is 10x slower.
        raise StageError(
            f"training.use_gpu is true but torch {torch.__version__} sees no CUDA device in this process"
        )
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_gpu else "cpu")
    if use_gpu:
        # Before NCCL starts: otherwise every rank's collectives (the final barrier too) run on cuda:0.
        torch.cuda.set_device(device)
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group(backend="nccl" if use_gpu else "gloo")
    if not use_gpu:
        # Processes on one host share its cores; torch's default (every core per process) oversubscribes.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    return Process(device, rank, world, distributed)


def finish_process(proc: Process) -> list[dict]:
    """Every rank's whereabouts (gathered to all), then leave the process group."""
    here = _whereabouts(proc.rank)
    if not proc.distributed:
        return [here]
    import torch.distributed as dist

    gathered: list = [None] * proc.world
    dist.all_gather_object(gathered, here)
    dist.barrier()
    dist.destroy_process_group()
    return gathered


def restore_checkpoint(path: Path, net, optimizer, scheduler) -> TrainState:
    """Load the checkpoint at `path` into the model, optimizer and scheduler; a fresh state without one."""
    import torch

    if not path.is_file():
        return TrainState()
    saved = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return TrainState(**saved["state"])


def save_checkpoint(path: Path, net, optimizer, scheduler, state: TrainState) -> None:
    """Atomically: a crash mid-write leaves the previous checkpoint."""
    import dataclasses

    import torch

    from segmentation.artifacts import atomic_write

    blob = {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": dataclasses.asdict(state),
    }
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def _wrap(net, proc: Process):
    from torch.nn.parallel import DistributedDataParallel

    if not proc.distributed:
        return net
    return DistributedDataParallel(
        net, device_ids=[proc.device.index] if proc.device.type == "cuda" else None
    )


def _log_plan(spec: TrainSpec, proc: Process, feeder, steps: int) -> None:
    log.info(
        "%s: %d processes, feeder %s (%s), %d steps/epoch of %d rows, %s",
        _what(spec),
        proc.world,
        feeder.name,
        "rows held in memory" if feeder.cached else "read every epoch: over training.cache_mb",
        steps,
        spec.batch_size,
        proc.device,
    )
    if spec.refine is None and spec.sequence is None and steps * spec.epochs < FEW_STEPS:
        log.warning(
            "training: %d optimizer steps in all (%d epochs x %d steps) leave an autoencoder "
            "undertrained; raise training.epochs or training.max_steps_per_epoch, or lower "
            "training.batch_size",
            steps * spec.epochs,
            spec.epochs,
            steps,
        )


def _what(spec: TrainSpec) -> str:
    if spec.sequence is not None:
        return f"training a sequence encoder over the last {spec.sequence.max_events} events"
    if spec.refine is not None:
        return f"refining with {len(spec.refine.centres)} centres"
    return "training"


def _whereabouts(rank: int) -> dict:
    import socket

    import segmentation

    return {
        "rank": rank,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "package": os.path.dirname(segmentation.__file__),
    }
