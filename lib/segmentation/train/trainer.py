"""The distributed training function TorchDistributor runs in every process.

Module-level and Spark-free: it imports torch itself, reads its shard through a feeder, and returns
only small results (losses, the model path). Every rank runs exactly `steps_per_epoch` steps per epoch,
so DDP never waits on a rank whose shard ran out.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path


def train(spec: dict) -> dict:
    """Train the autoencoder. `spec` keys: files, total_rows, feature_names, hidden_sizes,
    embedding_dim, epochs, batch_size, learning_rate, seed, feeder, use_gpu, model_path, version."""
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from segmentation.train import model as model_io
    from segmentation.train.feeders import FeedSpec, open_feeder, resolve_feeder

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    log = logging.getLogger("segmentation.train.trainer")

    use_gpu = bool(spec["use_gpu"]) and torch.cuda.is_available()
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group(backend="nccl" if use_gpu else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_gpu else "cpu")
    torch.manual_seed(spec["seed"])
    np.random.seed(spec["seed"] + rank)

    model_spec = model_io.ModelSpec(
        input_dim=len(spec["feature_names"]),
        hidden_sizes=tuple(spec["hidden_sizes"]),
        embedding_dim=spec["embedding_dim"],
        feature_names=tuple(spec["feature_names"]),
        version=spec["version"],
    )
    net = model_io.build(model_spec).to(device)  # same seed on every rank: same initial weights
    ddp = DistributedDataParallel(net) if distributed else net
    optimizer = torch.optim.Adam(ddp.parameters(), lr=spec["learning_rate"])
    loss_fn = torch.nn.MSELoss()

    feeder_name = resolve_feeder(spec["feeder"])
    batches = open_feeder(
        feeder_name,
        FeedSpec(tuple(spec["files"]), rank, world, spec["batch_size"], spec["seed"]),
    )
    steps = max(1, -(-spec["total_rows"] // (world * spec["batch_size"])))
    if rank == 0:
        log.info(
            "training: %d processes, feeder %s, %d steps/epoch of %d rows, %s",
            world,
            feeder_name,
            steps,
            spec["batch_size"],
            device,
        )

    losses = []
    for epoch in range(1, spec["epochs"] + 1):
        started = time.perf_counter()
        total = torch.zeros(2, device=device)
        ddp.train()
        for _ in range(steps):
            x = torch.from_numpy(next(batches)).to(device)
            optimizer.zero_grad()
            loss = loss_fn(ddp(x), x)
            loss.backward()
            optimizer.step()
            total += torch.stack([loss.detach() * len(x), torch.tensor(float(len(x)), device=device)])
        if distributed:
            dist.all_reduce(total)
        epoch_loss = float(total[0] / total[1])
        losses.append(epoch_loss)
        if rank == 0:
            rate = float(total[1]) / max(time.perf_counter() - started, 1e-9)
            log.info("epoch %d/%d: train loss %.5f, %.0f samples/s", epoch, spec["epochs"], epoch_loss, rate)

    if rank == 0:
        model_io.save(net.to("cpu"), model_spec, Path(spec["model_path"]))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return {"losses": losses, "model_path": spec["model_path"], "world_size": world, "feeder": feeder_name}
