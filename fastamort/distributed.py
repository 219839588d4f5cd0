"""Data-parallel amortised learning on ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

Under ``torchrun --nproc_per_node=K`` (or any initialised default process group),
:meth:`fastamort.AmortisedLearner.fit` runs one learner per process ("rank"):

* every rank reads its shard of each epoch's shuffled data (a ``DistributedSampler``-style
  split, padded so that all ranks take the same number of steps);
* every rank draws its own sleep samples from a rank-specific seed stream:
  :func:`sleep_seed` ``(seed, rank, step)`` reseeds the global RNG at each step, so a
  single process can reproduce rank r's step exactly, and a resumed run draws the same
  samples whatever the number of ranks it was checkpointed with;
* gradients are combined by one explicit all-reduce of a flat buffer per step (the learner's
  objective is not the forward pass of one module, so ``DistributedDataParallel`` would add
  nothing but hooks); parameters start from rank 0's values and stay identical.

Two ways to use the ranks' sleep budgets (``fit(..., pool_sleep=...)``):

``pool_sleep=False`` (default, "average")
    each rank solves its own M×M regression; the K estimates are averaged. Cost M³ per rank,
    communication one gradient vector. The average of independent consistent estimates has
    K times less variance, but keeps the bias (ridge bias, kernel misfit) of an M-sample KRR.
``pool_sleep=True`` ("pool")
    the ranks all-gather their sleep features, targets' right-hand sides and wake batches and
    every rank solves the same (KM)×(KM) regression; each rank differentiates only its own
    slice of the targets and the slices' gradients are summed. Cost (KM)³ per rank (the solve
    is replicated), communication O(KM·D). One bigger regression has lower bias as well as
    lower variance: prefer it while (KM)³ still fits the step budget, "average" beyond.

The kernel step is always per rank with averaged gradients. Progress bars and checkpoints
come from rank 0 only; a checkpoint written by K ranks resumes on any number of ranks.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import distributed as dist

from ._checks import check_int

__all__ = [
    "DistributedContext",
    "current_rank",
    "pooled_estimate",
    "resolve_distributed",
    "shard_order",
    "sleep_seed",
]


def current_rank() -> int:
    """This process's rank: from the process group, else ``torchrun``'s ``RANK``, else 0
    (usable before :func:`resolve_distributed` has set the group up)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def sleep_seed(seed: int, rank: int, step: int) -> int:
    """The RNG seed of ``rank``'s sleep samples at ``step`` (1-based) of a distributed run,
    reduced mod 2⁶⁴ (what ``torch.manual_seed`` takes; unchanged for seeds below ~2.8e8)."""
    return ((int(seed) * 1_000_003 + int(step)) * 65_537 + int(rank)) % (1 << 64)


def shard_order(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """``rank``'s share of an epoch's permutation, padded (by wrapping around) to equal length
    on every rank: ranks take the same number of steps, as with ``DistributedSampler``."""
    world_size = check_int(world_size, "world_size", 1)
    rank = check_int(rank, "rank", 0)
    if rank >= world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size = {world_size}, got {rank}")
    if not isinstance(order, torch.Tensor) or order.ndim != 1:
        raise TypeError(f"order: expected a 1-D tensor of indices, got {type(order).__name__}")
    n = order.numel()
    per_rank = -(-n // world_size)
    padded = order.repeat(-(-per_rank * world_size // n))[: per_rank * world_size]
    return padded[rank::world_size]


@dataclass
class DistributedContext:
    """The process group the learner runs in and how its ranks share work."""

    rank: int
    world_size: int
    pool_sleep: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Copies rank 0's values into ``tensors`` on every rank (in place)."""
        tensors = list(tensors)
        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
        flat = flat.to(self.device)
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t).to(t.device, t.dtype))
                offset += t.numel()

    def reduce_gradients_(
        self, params: Iterable[torch.Tensor], value: torch.Tensor, *, average: bool
    ) -> torch.Tensor:
        """All-reduces the gradients of ``params`` (mean if ``average``, else sum) together with
        the step's scalar ``value`` (always summed; returned), in one flat buffer.

        A rank whose gradient or value is not finite makes the reduced ones non-finite on every
        rank, so all ranks stop together instead of waiting on each other.
        """
        params = [p for p in params if p.requires_grad]
        parts = [value.detach().reshape(1).to(torch.float64)]
        for p in params:  # a parameter without a gradient (unused) contributes zeros
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            parts.append(g.detach().reshape(-1).to(torch.float64))
        flat = torch.cat([t.to(self.device) for t in parts])
        dist.all_reduce(flat)
        scale = 1.0 / self.world_size if average else 1.0
        offset = 1
        for p in params:
            if p.grad is not None:  # unused everywhere: stays None, as in one process
                g = flat[offset : offset + p.numel()].view_as(p) * scale
                p.grad = g.to(p.device, p.dtype)
            offset += p.numel()
        return flat[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (e.g. a callback's stop)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def all_gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenation over ranks (in rank order) of equally shaped tensors, no gradient."""
        t = t.detach().contiguous()
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return torch.cat(out)

    def barrier(self) -> None:
        dist.barrier()


def resolve_distributed(
    option: str | bool | None, device: torch.device, *, pool_sleep: bool = False
) -> DistributedContext | None:
    """The context ``fit(distributed=option)`` runs in, or None for a single process.

    ``"auto"``: an initialised default process group, else one set up from ``torchrun``'s
    environment (``WORLD_SIZE`` > 1: NCCL for CUDA models, gloo otherwise), else None.
    ``True``: as "auto" but a single process is an error. ``False``/``None``/``"off"``: None.
    """
    if option is None or option is False or option == "off":
        return None
    if option not in ("auto", True):
        raise ValueError(f"distributed: expected 'auto', True, False or 'off', got {option!r}")
    if not dist.is_available():
        if option is True:
            raise RuntimeError("distributed=True: this torch build has no torch.distributed")
        return None
    world_env = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if not dist.is_initialized() and world_env > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        # we created it, so we tear it down: exiting with a live gloo group can abort
        atexit.register(_destroy_process_group)
    if not dist.is_initialized():
        if option is True:
            raise RuntimeError(
                "distributed=True: no process group; run under torchrun (WORLD_SIZE > 1) or "
                "call torch.distributed.init_process_group first"
            )
        return None
    world = dist.get_world_size()
    if world == 1 and option == "auto":
        return None
    comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    return DistributedContext(dist.get_rank(), world, bool(pool_sleep), comm_device)


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def pooled_estimate(
    ctx: DistributedContext,
    model: torch.nn.Module,
    x_wake: torch.Tensor,
    *,
    n_sleep: int,
    kernel: Any,
    lam: float,
    estimator: str,
    trend: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of the pooled estimator: ``(objective_part, pooled_value)``.

    The weights W = (K + λI)⁻¹ K_sw V of all ranks' sleep points (K·M of them) against all
    ranks' wake batches are solved identically on every rank; this rank's part of Ĵ uses its
    own M rows of W with its own targets (graph to θ). Summing the parts' gradients over ranks
    gives the gradient of the pooled Ĵ; ``pooled_value`` is Ĵ itself (detached). ``trend``:
    the pooled regression with that polynomial trend (:mod:`fastamort.polynomial_trend`).
    """
    from .estimator import (
        KRR_DTYPE,
        draw_sleep,
        objective_from_weights,
        regression_parts,
        wake_vectors,
    )
    from .polynomial_trend import trend_weights
    from .solvers import SolverConfig, krr_weights

    z, xs = draw_sleep(model, n_sleep)
    parts = regression_parts(model, z, xs, estimator)
    with torch.no_grad():
        fs = kernel.features(xs).to(KRR_DTYPE)
        fw, v = wake_vectors(model, kernel, x_wake, estimator)
        fs_all = ctx.all_gather_rows(fs.to(ctx.device)).to(fs.device)
        fw_all = ctx.all_gather_rows(fw.to(ctx.device)).to(fw.device)
        v_all = ctx.all_gather_rows(v.to(ctx.device)).to(v.device) / ctx.world_size
        if trend is None:
            weights, _ = krr_weights(SolverConfig("exact"), kernel, fs_all, fw_all, v_all, lam)
        else:
            weights, _ = trend_weights(kernel, fs_all, fw_all, v_all, lam, trend)
        mine = weights[ctx.rank * n_sleep : (ctx.rank + 1) * n_sleep]
    part = objective_from_weights(model, mine, parts, estimator, x_wake)
    log_h = getattr(model, "log_base_measure", None)
    base = log_h(x_wake).mean().detach().to(part.dtype) if callable(log_h) else part.new_zeros(())
    # Ĵ = Σ_r (part_r − log h_r) + mean_r log h_r: each part carries its own batch's log h.
    share = (part.detach() - base + base / ctx.world_size).to(torch.float64).reshape(1)
    dist.all_reduce(share)
    return part, share[0]
