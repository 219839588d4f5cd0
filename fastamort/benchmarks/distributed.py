"""Benchmark of data-parallel amortised learning: 1, 2 (… GPUs) ranks, averaged or pooled.

At a fixed per-rank sleep budget M and per-rank wake batch, for K ranks started here with
``torch.multiprocessing`` (gloo over loopback on CPUs, one thread per rank; NCCL with one GPU
per rank on a multi-GPU machine):

* ``steps_per_s``: learner steps (kernel step + model step + all-reduce) per second, and
  ``points_per_s`` = K × batch × steps/s, the data throughput;
* ``efficiency``: points/s over K × the single-rank points/s (1 = perfect scaling);
* ``cosine``: mean cosine similarity of the combined gradient estimate to the exact
  factor-analysis gradient of the mean log-likelihood over all ranks' wake batches, over
  several independent sleep draws at a fixed θ — averaging (``pool_sleep=False``) and
  pooling (``pool_sleep=True``) the ranks' sleep budgets.

Run as ``fastamort bench distributed [--quick] [--json PATH] [--csv PATH] [--plot PATH]``.
On a CPU every rank runs one thread (K ranks use K cores), so ideal scaling is K×.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import multiprocessing as mp

import fastamort
from fastamort.distributed import DistributedContext, pooled_estimate, sleep_seed
from fastamort.models import FactorAnalysis

from ._harness import bench_main, environment

D_OBS, D_LATENT, BATCH, LAM = 10, 3, 100, 1e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem(device: torch.device) -> tuple[FactorAnalysis, FactorAnalysis, torch.Tensor]:
    torch.manual_seed(0)
    truth = FactorAnalysis(D_OBS, D_LATENT).double().to(device)
    data = truth.sample(4000)[1]
    torch.manual_seed(1)
    model = FactorAnalysis(D_OBS, D_LATENT).double().to(device)
    return truth, model, data


def _gradient_cosines(
    ctx: DistributedContext, model, kernel, data: torch.Tensor, m: int, repeats: int
) -> list[float]:
    """Cosine of the combined estimate to the exact gradient, per independent sleep draw."""
    batch = data[ctx.rank * BATCH : (ctx.rank + 1) * BATCH]
    wake_all = ctx.all_gather_rows(batch.to(ctx.device)).to(batch.device)
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    exact = torch.autograd.grad(model.exact_log_likelihood(wake_all).mean(), params)
    exact_flat = torch.cat([g.reshape(-1) for g in exact])
    cosines = []
    for rep in range(repeats):
        torch.manual_seed(sleep_seed(1000 + rep, ctx.rank, 1))
        model.zero_grad()
        if ctx.pool_sleep:
            part, value = pooled_estimate(
                ctx, model, batch, n_sleep=m, kernel=kernel, lam=LAM, estimator="expfam"
            )
            part.backward()
        else:
            value = fastamort.amortised_objective(model, batch, n_sleep=m, kernel=kernel, lam=LAM)
            value.backward()
        ctx.reduce_gradients_(params, value, average=not ctx.pool_sleep)
        est = torch.cat([p.grad.reshape(-1) for p in params])
        cosines.append(float(torch.nn.functional.cosine_similarity(est, exact_flat, dim=0)))
    return cosines


def _worker(
    rank: int, world: int, port: int, out: str, m: int, steps: int, reps: int, cuda: bool
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    if not cuda:  # one core per rank: K ranks use K cores
        torch.set_num_threads(1)
    else:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    comm = device if cuda else torch.device("cpu")
    try:
        result: dict[str, Any] = {"device": device.type}
        for pool in (False, True) if world > 1 else (False,):
            _, model, data = _problem(device)
            kernel = fastamort.kernels.Gaussian().double().to(device).init_from(data[:m])
            ctx = DistributedContext(rank, world, pool, comm)
            cosines = _gradient_cosines(ctx, model, kernel, data, m, reps)
            result[f"cosines_pool{int(pool)}"] = cosines
            learner = fastamort.AmortisedLearner(
                model, kernel=kernel, n_sleep=m, n_held_out=m // 10, lam=LAM, lr=1e-3
            )
            learner.initialise()
            n = world * BATCH * (steps + 1)
            dist.barrier()
            learner.fit(data[:n], epochs=1, batch_size=BATCH, progress=False, pool_sleep=pool)
            timed = learner.history[1:]  # the first step is a warm-up
            result[f"step_s_pool{int(pool)}"] = sum(h["seconds"] for h in timed) / len(timed)
        if rank == 0:
            torch.save(result, Path(out) / "result.pt")
    finally:
        dist.destroy_process_group()


def _run_world(world: int, m: int, steps: int, reps: int, cuda: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _worker,
            args=(world, _free_port(), tmp, m, steps, reps, cuda),
            nprocs=world,
            start_method="spawn",
        )
        return torch.load(Path(tmp) / "result.pt", weights_only=False)


def run(*, quick: bool = False, device: str | None = None):
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    m = 500 if quick else 1500
    steps, reps = (3, 3) if quick else (8, 8)
    # one GPU per rank: unless there are several GPUs, every rank runs on the CPU
    cuda = torch.cuda.device_count() >= 2 and device != "cpu"
    worlds = [1, 2] + ([k for k in (4, 8) if k <= torch.cuda.device_count()] if cuda else [])
    rows: list[dict[str, Any]] = []
    base_rate = None
    for world in worlds:
        t0 = time.perf_counter()
        res = _run_world(world, m, steps, reps, cuda)
        for pool in (False, True) if world > 1 else (False,):
            step_s = res[f"step_s_pool{int(pool)}"]
            rate = world * BATCH / step_s
            if world == 1:
                base_rate = rate
            cos = res[f"cosines_pool{int(pool)}"]
            rows.append(
                {
                    "ranks": world,
                    "mode": "pool" if pool else "average",
                    "device": res["device"],
                    "M_per_rank": m,
                    "batch_per_rank": BATCH,
                    "steps_per_s": 1.0 / step_s,
                    "points_per_s": rate,
                    "efficiency": rate / (world * base_rate) if base_rate else None,
                    "cosine": sum(cos) / len(cos),
                    "cosine_min": min(cos),
                }
            )
        print(f"  done {world} rank(s) in {time.perf_counter() - t0:.1f} s", flush=True)
    env = environment(torch.device("cuda" if rows and rows[-1]["device"] == "cuda" else "cpu"))
    return rows, env


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    labels = [f"{r['ranks']} {r['mode']}" for r in rows]
    a1.bar(labels, [r["points_per_s"] for r in rows])
    a1.set_ylabel("wake points / s")
    a2.bar(labels, [r["cosine"] for r in rows])
    a2.set_ylim(min(r["cosine"] for r in rows) - 0.02, 1.0)
    a2.set_ylabel("cosine to exact gradient")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COLUMNS = [
    "ranks",
    "mode",
    "device",
    "M_per_rank",
    "steps_per_s",
    "points_per_s",
    "efficiency",
    "cosine",
    "cosine_min",
]


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main("distributed", __doc__, run, plot, COLUMNS, argv)
