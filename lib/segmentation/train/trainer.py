"""The distributed training function TorchDistributor runs in every process.

Module-level and Spark-free: it imports torch itself, reads its shard through a feeder, and returns
only small results (losses, the model path). Every rank runs exactly `steps_per_epoch` steps per epoch,
so DDP never waits on a rank whose shard ran out.

After every epoch rank 0 writes a checkpoint (model, optimizer, scheduler, epoch, early-stopping state,
best weights) atomically; TorchDistributor does not restart failed ranks, so re-running the stage for
the same run resumes after the last completed epoch. Random draws (shuffling, dropout, input noise)
are seeded from (seed, rank, epoch), so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

FEW_STEPS = 200  # fewer optimizer steps than this left embeddings far from converged on generated data


def train(spec: dict) -> dict:
    """Train the autoencoder. `spec` keys: files, total_rows, feature_names, hidden_sizes,
    embedding_dim, activation, dropout, noise_std, epochs, batch_size, learning_rate, lr_schedule,
    grad_clip, validation_share, patience, stop_after_epochs, seed, feeder, cache_mb, use_gpu, model_path,
    checkpoint_path, version."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from segmentation.errors import StageError
    from segmentation.train import model as model_io
    from segmentation.train.feeders import Feeder, FeedSpec, validation_rows

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    log = logging.getLogger("segmentation.train.trainer")

    use_gpu = bool(spec["use_gpu"])
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
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if not use_gpu:
        # Processes on one host share its cores; torch's default (every core per process) oversubscribes.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))

    model_spec = model_io.ModelSpec(
        input_dim=len(spec["feature_names"]),
        hidden_sizes=tuple(spec["hidden_sizes"]),
        embedding_dim=spec["embedding_dim"],
        feature_names=tuple(spec["feature_names"]),
        version=spec["version"],
        activation=spec["activation"],
        dropout=spec["dropout"],
    )
    torch.manual_seed(spec["seed"])  # the same initial weights on every rank
    net = model_io.build(model_spec).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=spec["learning_rate"])
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec["epochs"])
        if spec["lr_schedule"] == "cosine"
        else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    )
    state = {
        "epoch": 0,
        "train_loss": [],
        "val_loss": [],
        "best_val": float("inf"),
        "bad_epochs": 0,
        "best_state": None,
        "stopped_early": False,
    }
    checkpoint = Path(spec["checkpoint_path"])
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        if rank == 0:
            log.info("resuming from the checkpoint after epoch %d", state["epoch"])
    if distributed:
        ddp = DistributedDataParallel(net, device_ids=[device.index] if use_gpu else None)
    else:
        ddp = net
    loss_fn = torch.nn.MSELoss()

    feed = FeedSpec(
        tuple(spec["files"]), rank, world, spec["batch_size"], spec["seed"], spec["validation_share"]
    )
    held_out = torch.from_numpy(validation_rows(feed)).to(device)
    feeder = Feeder(spec["feeder"], feed, spec["cache_mb"] << 20)
    train_rows = max(1, int(spec["total_rows"] * (1 - spec["validation_share"])))
    steps = max(1, -(-train_rows // (world * spec["batch_size"])))
    if rank == 0 and state["epoch"] == 0:
        log.info(
            "training: %d processes, feeder %s (%s), %d steps/epoch of %d rows, %s",
            world,
            feeder.name,
            "rows held in memory" if feeder.cached else "read every epoch: over training.cache_mb",
            steps,
            spec["batch_size"],
            device,
        )
        if steps * spec["epochs"] < FEW_STEPS:
            log.warning(
                "training: %d optimizer steps in all (%d epochs x %d steps) leave an autoencoder "
                "undertrained; raise training.epochs or training.max_steps_per_epoch, or lower "
                "training.batch_size",
                steps * spec["epochs"],
                spec["epochs"],
                steps,
            )

    launched_at = state["epoch"]
    epoch_seconds: list[float] = []  # this launch's epochs (steady throughput for the benchmark)
    while state["epoch"] < spec["epochs"] and not state["stopped_early"]:
        if spec["stop_after_epochs"] and state["epoch"] - launched_at >= spec["stop_after_epochs"]:
            break
        epoch = state["epoch"] + 1
        torch.manual_seed(spec["seed"] * 100_003 + rank * 1009 + epoch)
        started = time.perf_counter()
        totals = torch.zeros(4, device=device)  # train loss sum, train rows, val loss sum, val rows
        ddp.train()
        batches = feeder.epoch(epoch)
        for _ in range(steps):
            x = torch.from_numpy(next(batches)).to(device)
            noisy = x + spec["noise_std"] * torch.randn_like(x) if spec["noise_std"] > 0 else x
            optimizer.zero_grad()
            loss = loss_fn(ddp(noisy), x)
            loss.backward()
            if spec["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(ddp.parameters(), spec["grad_clip"])
            optimizer.step()
            totals[0] += loss.detach() * len(x)
            totals[1] += len(x)
        batches.close()
        scheduler.step()
        net.eval()
        with torch.no_grad():
            if len(held_out):
                totals[2] += ((net(held_out) - held_out) ** 2).mean(dim=1).sum()
                totals[3] += len(held_out)
        if distributed:
            dist.all_reduce(totals)  # every rank sees the same losses and so makes the same decisions
        train_loss = float(totals[0] / totals[1])
        val_loss = float(totals[2] / totals[3]) if float(totals[3]) > 0 else train_loss
        state["epoch"] = epoch
        state["train_loss"].append(train_loss)
        state["val_loss"].append(val_loss)
        if val_loss < state["best_val"] - 1e-7:
            state["best_val"], state["bad_epochs"] = val_loss, 0
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        else:
            state["bad_epochs"] += 1
            state["stopped_early"] = 0 < spec["patience"] <= state["bad_epochs"]
        epoch_seconds.append(time.perf_counter() - started)
        if rank == 0:
            rate = float(totals[1]) / max(epoch_seconds[-1], 1e-9)
            log.info(
                "epoch %d/%d: train loss %.5f, validation loss %.5f, %.0f samples/s%s",
                epoch,
                spec["epochs"],
                train_loss,
                val_loss,
                rate,
                " (early stop)" if state["stopped_early"] else "",
            )
            _save_checkpoint(checkpoint, net, optimizer, scheduler, state)

    finished = state["epoch"] >= spec["epochs"] or state["stopped_early"]
    if rank == 0 and finished:
        net.load_state_dict(state["best_state"] or net.state_dict())  # the best epoch by validation loss
        model_io.save(net.to("cpu"), model_spec, Path(spec["model_path"]), spec.get("scaling"))
    # Where each rank ran (host, process, working directory, the package it imported): the run's
    # record shows whether training ran on the driver or in executors, and with which code.
    processes = [_whereabouts(rank)]
    if distributed:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, processes[0])
        processes = gathered
        dist.barrier()
        dist.destroy_process_group()
    return {
        "losses": state["train_loss"],
        "val_losses": state["val_loss"],
        "epochs_done": state["epoch"],
        "finished": finished,
        "stopped_early": state["stopped_early"],
        "model_path": spec["model_path"],
        "world_size": world,
        "device": str(device),
        "feeder": feeder.name,
        "feeder_cached": feeder.cached,
        "epoch_seconds": epoch_seconds,
        "batch_size": spec["batch_size"],
        "samples_per_epoch": steps * world * spec["batch_size"],
        "processes": processes,
    }


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


def _save_checkpoint(path: Path, net, optimizer, scheduler, state: dict) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": state,
        },
        tmp,
    )
    tmp.replace(path)  # atomic: a crash mid-write leaves the previous checkpoint
