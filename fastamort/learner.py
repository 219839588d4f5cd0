"""The training loop: amortised learning by wake-sleep, with kernel learning and safe checkpoints.

Each step of :meth:`AmortisedLearner.fit`:

1. kernel step (if ``learn_kernel``): fresh sleep set (M) and held-out set (M'), one optimiser
   step on :func:`fastamort.kernel_loss` w.r.t. the kernel's parameters and log λ;
2. model step: fresh sleep set, Ĵ on the wake batch (:func:`fastamort.amortised_estimate`),
   one optimiser step on −Ĵ w.r.t. the model's parameters.

``solver=`` ("exact", "nystrom", "rff", "cg"; :mod:`fastamort.solvers`) picks how both
regressions are solved. With ``solver="cg"`` each model step's CG starts from the previous
step's solution mapped onto the new sleep set (``warm_start=True``), the incremental gradient
model; the record of each step then holds ``solver_iterations``. Consecutive sleep sets are
unrelated, though, so the previous solution is only a rough start; with ``sleep_refresh`` < 1
the model step's sleep set is drawn in :data:`SLEEP_BLOCKS` blocks, each from its own seed,
and only that fraction of the blocks gets new seeds per step: the other samples are the same
noise pushed through the moved model (valid samples of the current p_θ, correlated across
steps like common random numbers), so row i of the new set follows row i of the old one and
the old weights are a close start (``WarmStart(aligned=True)``).

At the first step the lengthscale is set by the median heuristic (a kernel without one) and
λ by the ``lam`` rule from one sleep set (default: leave-one-out; ``lam="evidence"`` also
chooses the lengthscale; :mod:`fastamort.hyperparameters`). Checkpoints
(:mod:`fastamort.checkpoint`) are written atomically and hold the model, kernel, λ,
optimisers, an optional learning rate scheduler, RNG states, step and history, so
``resume=True`` continues bit for bit; they load with ``torch.load(weights_only=True)``, and a
resume by a learner set up differently (solver, n_sleep, model, kernel, optimiser, data shape,
...) is refused with the differences named, before anything changes. A non-finite objective or
gradient stops training with :class:`NonFiniteError` naming the step and the parameter, before
any parameter changes; the last checkpoint stays as it was.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint as _checkpoint
from ._checks import check_int, first_nonfinite
from .distributed import (
    DistributedContext,
    pooled_estimate,
    resolve_distributed,
    shard_order,
    sleep_seed,
)
from .estimator import (
    amortised_estimate,
    draw_sleep,
    regression_targets,
    resolve_estimator,
)
from .hyperparameters import (
    LEARNED_LAMBDA_RANGE,
    LambdaBoundWarning,
    choose_hyperparameters,
    clamp_log_lambda,
)
from .kernel_learning import kernel_loss
from .kernels import Gaussian, Kernel
from .learner_config import LearnerConfig
from .models.base import check_model
from .solvers import SolverConfig, WarmStart, solver_config

#: Blocks (own seed each) of the model step's sleep set when ``sleep_refresh`` < 1.
SLEEP_BLOCKS = 20
Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or infinite objective or gradient."""


class AmortisedLearner:
    """Trains a model by amortised learning.

    Args:
        model: a model following :mod:`fastamort.models.base`.
        kernel: a :class:`fastamort.kernels.Kernel` (default Gaussian, median heuristic).
        n_sleep: sleep samples M per regression.
        n_held_out: held-out sleep samples M' for the kernel step.
        lr, kernel_lr: Adam learning rates of the model and of the kernel (and log λ).
        optimizer: a ready optimiser over the model's parameters (overrides ``lr``).
        kernel_optimizer: a ready optimiser over the kernel's parameters and ``log_lam``.
        lam: initial ridge λ, or the rule that chooses it from the first sleep set: "loo"
            (default, None: leave-one-out at the median-heuristic lengthscale, which the
            kernel steps then learn) or "evidence" (also the lengthscale when the kernel has
            none; :mod:`fastamort.hyperparameters`). The default differs from
            :func:`fastamort.amortised_objective`'s because it trained better: with the
            evidence start the images experiment's FID was 1.95 and 1.06 (binary, continuous)
            against 0.63 and 0.73. Kernel steps keep λ in
            :data:`fastamort.hyperparameters.LEARNED_LAMBDA_RANGE` (clamped, with a
            :class:`~fastamort.hyperparameters.LambdaBoundWarning`).
        estimator: "auto", "generic" or "expfam".
        learn_kernel: whether to run kernel steps.
        seed: seeds the data order (per epoch); sampling uses the global torch RNG.
        max_grad_norm: clip the model gradient to this norm (None: no clipping).
        solver: "exact", "nystrom", "rff" or "cg" (see :func:`fastamort.amortised_estimate`),
            or a :class:`fastamort.solvers.SolverConfig` with its options; the kernel step uses
            the same low-rank regression (cg: its Nyström surrogate).
        n_inducing, n_features, tol, inducing: deprecated loose solver options (a
            :class:`FutureWarning`): set them in the SolverConfig.
        warm_start: with ``solver="cg"``, start each solve from the previous step's solution;
            default (None): only when ``sleep_refresh`` < 1 (on unrelated sleep sets the mapped
            start saves about one iteration and costs one product).
        sleep_refresh: fraction of the model step's sleep samples drawn with new noise per
            step (1: all fresh, the default; < 1: the rest re-use their noise, see above).
        trend: the model step's regression with an unpenalised polynomial trend of this
            degree (0, 1, 2; :mod:`fastamort.polynomial_trend`, exact solver only); the kernel
            steps fit the plain regression. None (default): none.

    Example:
        >>> import torch, fastamort
        >>> from fastamort.models import FactorAnalysis
        >>> _ = torch.manual_seed(0)
        >>> data = FactorAnalysis(3, 1).sample(200)[1]
        >>> learner = fastamort.AmortisedLearner(FactorAnalysis(3, 1), n_sleep=200, n_held_out=50)
        >>> history = learner.fit(data, epochs=1, batch_size=100, progress=False)
        >>> len(history)
        2
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        kernel: Kernel | None = None,
        n_sleep: int = 2000,
        n_held_out: int = 200,
        lr: float = 1e-3,
        kernel_lr: float = 1e-2,
        optimizer: torch.optim.Optimizer | None = None,
        kernel_optimizer: torch.optim.Optimizer | None = None,
        lam: float | str | None = None,
        estimator: str = "auto",
        learn_kernel: bool = True,
        seed: int = 0,
        max_grad_norm: float | None = None,
        solver: str | SolverConfig = "exact",
        n_inducing: int | None = None,
        n_features: int | None = None,
        tol: float | None = None,
        inducing: str | None = None,
        warm_start: bool | None = None,
        sleep_refresh: float = 1.0,
        trend: int | None = None,
    ):
        check_model(model)
        self.config = LearnerConfig(
            n_sleep=n_sleep,
            n_held_out=n_held_out,
            lam=lam,
            estimator=estimator,
            learn_kernel=learn_kernel,
            seed=seed,
            max_grad_norm=max_grad_norm,
            solver=solver_config(solver, n_inducing, n_features, tol, inducing),
            warm_start=warm_start,
            sleep_refresh=sleep_refresh,
            trend=trend,
        )
        if kernel is not None and not isinstance(kernel, Kernel):
            raise TypeError(
                "kernel: expected a fastamort.kernels.Kernel instance such as "
                f"fastamort.kernels.Gaussian() (or None), got {type(kernel).__name__}"
            )
        for name, opt in (("optimizer", optimizer), ("kernel_optimizer", kernel_optimizer)):
            if opt is not None and not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(
                    f"{name}: expected a torch.optim.Optimizer instance (or None for Adam; "
                    f"set its learning rate with lr / kernel_lr), got {type(opt).__name__}"
                )
        self._warm: WarmStart | None = None
        self._sleep_seeds: list[int] | None = None
        self._sleep_turn = 0
        self.model = model
        self.estimator = resolve_estimator(model, estimator)
        device = _device_of(model)
        self.kernel = (kernel if kernel is not None else Gaussian()).to(device)
        lam0 = self.config.initial_lam
        self.log_lam = nn.Parameter(
            torch.tensor(
                0.0 if lam0 is None else math.log(lam0), dtype=torch.float64, device=device
            )
        )
        self.optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
        self.kernel_optimizer = kernel_optimizer or torch.optim.Adam(
            [p for p in self.kernel.parameters() if p.requires_grad] + [self.log_lam], lr=kernel_lr
        )
        self.step_count = 0
        self.history: list[dict[str, Any]] = []
        self.initialised = False
        self._obs_shape: tuple[int, ...] | None = None  # of the model's samples, once drawn
        self._dist: DistributedContext | None = None  # set by fit() under torch.distributed
        #: the learning rate scheduler of the last :meth:`fit` (stepped after every step)
        self.scheduler: Scheduler | None = None
        self._fit_config: dict[str, Any] | None = None  # data shape and batch size of fit()

    def hyperparameters(self) -> dict[str, Any]:
        """The settings a checkpoint records and a resume must match
        (:data:`fastamort.checkpoint.HYPERPARAMETERS`)."""
        return self.config.hyperparameters(self.estimator)

    # the settings, read from the frozen config
    n_sleep = property(lambda self: self.config.n_sleep)
    n_held_out = property(lambda self: self.config.n_held_out)
    learn_kernel = property(lambda self: self.config.learn_kernel)
    seed = property(lambda self: self.config.seed)
    max_grad_norm = property(lambda self: self.config.max_grad_norm)
    solver = property(lambda self: self.config.solver)
    warm_start = property(lambda self: self.config.uses_warm_start)
    sleep_refresh = property(lambda self: self.config.sleep_refresh)
    trend = property(lambda self: self.config.trend)

    # ----------------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        return float(self.log_lam.detach().exp())

    def initialise(self) -> None:
        """Lengthscale (median heuristic, then the λ rule's choice) and λ from one sleep set
        (once)."""
        self._initialise(None)

    def _initialise(self, data: torch.Tensor | None) -> None:
        """:meth:`initialise`, first checking ``data``'s observation shape against the model's
        (as soon as the sleep set shows it)."""
        if self.initialised:
            _check_data_shape(data, self._obs_shape)
            return
        z, x = draw_sleep(self.model, self.n_sleep)
        self._obs_shape = tuple(x.shape[1:])
        _check_data_shape(data, self._obs_shape)
        choose_ell = not bool(self.kernel.initialised)
        if choose_ell:
            self.kernel.init_from(x)
        if self.config.lam_rule is not None:
            with torch.no_grad():
                targets, stats = regression_targets(self.model, z, x, self.estimator)
                lam, ell = choose_hyperparameters(
                    self.kernel.features(x).to(torch.float64), self.kernel, targets, stats,
                    rule=self.config.lam_rule, lengthscale=choose_ell,
                )  # fmt: skip
                self.log_lam.fill_(math.log(lam))
                if ell is not None:
                    self.kernel.log_lengthscale.fill_(math.log(ell))
        self.initialised = True

    def step(self, x_batch: torch.Tensor, *, epoch: int = 0) -> dict[str, Any]:
        """One kernel step and one model step on a wake batch; returns the step's record."""
        start = time.perf_counter()
        self.initialise()
        step = self.step_count + 1
        record: dict[str, Any] = {"step": step, "epoch": epoch}
        dctx = self._dist
        if dctx is not None:  # rank-specific sleep stream, the same whatever the rank count
            torch.manual_seed(sleep_seed(self.seed, dctx.rank, step))
        if self.learn_kernel:
            fit = draw_sleep(self.model, self.n_sleep)
            held = draw_sleep(self.model, self.n_held_out, name="n_held_out", minimum=1)
            loss = kernel_loss(
                self.model,
                self.kernel,
                fit,
                held,
                self.log_lam.exp(),
                estimator=self.estimator,
                solver=self.solver,
            )
            self.kernel_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            kernel_params = [p for _, p in self._kernel_named_parameters()]
            loss = self._combine_ranks(kernel_params, loss.detach())
            _check_finite_value(loss, "kernel loss", step)
            _check_finite_grads(self._kernel_named_parameters(), step)
            self.kernel_optimizer.step()
            record["kernel_loss"] = float(loss.detach())
            bound = clamp_log_lambda(self.log_lam)
            if bound is not None:
                record["lam_at_bound"] = bound
                warnings.warn(
                    f"step {step}: the learned λ reached the {bound} bound of "
                    f"LEARNED_LAMBDA_RANGE {LEARNED_LAMBDA_RANGE} and is clamped to it",
                    LambdaBoundWarning,
                    stacklevel=2,
                )
        if dctx is not None and dctx.pool_sleep:
            part, objective = pooled_estimate(
                dctx,
                self.model,
                x_batch,
                n_sleep=self.n_sleep,
                kernel=self.kernel,
                lam=self.lam,
                estimator=self.estimator,
                trend=self.trend,
            )
            self.optimizer.zero_grad(set_to_none=True)
            (-part).backward()
            self._combine_ranks(self.model.parameters(), part.detach(), average=False)
            _check_finite_value(objective, "objective", step)
            self._model_update(step)
            return self._finish_step(record, step, objective, {}, start)
        est = amortised_estimate(
            self.model,
            x_batch,
            n_sleep=self.n_sleep,
            sleep=self._model_sleep() if self.sleep_refresh < 1.0 else None,
            kernel=self.kernel,
            lam=self.lam,
            estimator=self.estimator,
            solver=self.solver,
            warm_start=self._warm,
            trend=self.trend,
        )
        self.optimizer.zero_grad(set_to_none=True)
        (-est.objective).backward()
        objective = self._combine_ranks(self.model.parameters(), est.objective.detach())
        _check_finite_value(objective, "objective", step)
        self._model_update(step)
        if self.warm_start:
            self._warm = est.warm_start(aligned=self.sleep_refresh < 1.0)
        return self._finish_step(record, step, objective, est.info, start)

    def _combine_ranks(
        self, params: Iterable[torch.Tensor], value: torch.Tensor, *, average: bool = True
    ) -> torch.Tensor:
        """After a backward pass: under torch.distributed, the gradients of ``params`` averaged
        (or summed) over the ranks and the ranks' mean of ``value``; else ``value`` as it is.

        Every rank reaches the all-reduce before anything is checked, so a non-finite value on
        one rank stops all of them together.
        """
        if self._dist is None:
            return value
        total = self._dist.reduce_gradients_(params, value, average=average)
        return total / self._dist.world_size

    def _model_update(self, step: int) -> None:
        """Checks the model's gradients, clips them if asked, and takes the optimiser step."""
        _check_finite_grads(self.model.named_parameters(), step)
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()

    def _finish_step(
        self,
        record: dict[str, Any],
        step: int,
        objective: torch.Tensor,
        info: dict[str, Any],
        start: float,
    ) -> dict[str, Any]:
        if "iterations" in info:
            record["solver_iterations"] = info["iterations"]
        self.step_count = step
        record.update(
            objective=float(objective),
            lengthscale=float(self.kernel.lengthscale.detach()),
            lam=self.lam,
            seconds=time.perf_counter() - start,
        )
        self.history.append(record)
        return record

    def _model_sleep(self) -> tuple[Any, torch.Tensor]:
        """The model step's sleep set, in blocks with carried-over seeds (``sleep_refresh``)."""
        blocks = min(SLEEP_BLOCKS, self.n_sleep // 2)

        def new_seed() -> int:
            return int(torch.randint(0, 2**62, (1,)))

        if self._sleep_seeds is None:
            self._sleep_seeds = [new_seed() for _ in range(blocks)]
        else:
            renew = round(self.sleep_refresh * blocks)
            for _ in range(renew):
                self._sleep_seeds[self._sleep_turn % blocks] = new_seed()
                self._sleep_turn += 1
        sizes = [self.n_sleep // blocks + (i < self.n_sleep % blocks) for i in range(blocks)]
        devices = [_device_of(self.model)] if _device_of(self.model).type == "cuda" else []
        parts = []
        for seed, size in zip(self._sleep_seeds, sizes, strict=True):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                parts.append(draw_sleep(self.model, size))
        return _cat_latents([z for z, _ in parts]), torch.cat([x for _, x in parts])

    def _kernel_named_parameters(self) -> Iterable[tuple[str, torch.Tensor]]:
        yield from (("kernel." + n, p) for n, p in self.kernel.named_parameters())
        yield "log_lam", self.log_lam

    # ----------------------------------------------------------------------------------
    def fit(
        self,
        data: torch.Tensor | np.ndarray,
        *,
        epochs: int = 1,
        batch_size: int = 100,
        progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 50,
        resume: bool = False,
        callbacks: Sequence[Callable[[AmortisedLearner, dict[str, Any]], Any]] = (),
        distributed: str | bool = "auto",
        pool_sleep: bool = False,
        scheduler: Scheduler | None = None,
    ) -> list[dict[str, Any]]:
        """Runs ``epochs`` passes over ``data`` (N, *obs_shape) in shuffled mini-batches.

        Args:
            checkpoint: path of the checkpoint file, written every ``checkpoint_every`` steps
                and at the end (atomically; a write is tried before the first step).
            resume: continue from ``checkpoint`` if it exists (bit-exact continuation; from a
                checkpoint of a run on another number of ranks, it continues at the same step).
                The learner must be set up as the one that wrote it, and ``data`` and
                ``batch_size`` must be the same: ValueError names any difference, and nothing
                is changed.
            callbacks: called as ``cb(learner, record)`` after every step; returning True stops.
            distributed: "auto" runs data-parallel under ``torchrun`` or an initialised
                process group (:mod:`fastamort.distributed`): each rank takes its shard of the
                data (``batch_size`` is per rank) and its own sleep samples, gradients are
                averaged, progress and checkpoints come from rank 0. False or "off": one
                process; True: distributed or an error.
            pool_sleep: distributed only: one regression on all ranks' sleep samples instead
                of averaging the ranks' estimates (see :mod:`fastamort.distributed`).
            scheduler: a learning rate scheduler of the learner's ``optimizer`` (or
                ``kernel_optimizer``), stepped after every learner step (``ReduceLROnPlateau``
                with the step's −objective); its state is in the checkpoint.

        Returns:
            the history: one dict per step (step, epoch, objective, kernel_loss, lengthscale,
            lam, seconds).
        """
        data = _as_data(data, self.model)
        batch_size = check_int(batch_size, "batch_size", 1)
        epochs = check_int(epochs, "epochs", 0)
        checkpoint_every = check_int(checkpoint_every, "checkpoint_every", 1)
        if resume and checkpoint is None:
            raise ValueError("resume=True needs a checkpoint path")
        self._check_scheduler(scheduler)
        if checkpoint is not None:
            checkpoint = _checkpoint.check_path(checkpoint)  # a real write now, not after the run
        dctx = resolve_distributed(distributed, _device_of(self.model), pool_sleep=pool_sleep)
        if dctx is not None and dctx.pool_sleep and self.solver.solver != "exact":
            raise ValueError(f"pool_sleep: needs solver='exact', got {self.solver.solver!r}")
        before = self.scheduler, self._fit_config
        self.scheduler = scheduler
        self._fit_config = {"data_shape": list(data.shape), "batch_size": batch_size}
        if resume and checkpoint.exists():
            try:
                _checkpoint.restore(
                    self, _checkpoint.read(checkpoint), source=str(checkpoint), fit=True
                )
            except ValueError:
                self.scheduler, self._fit_config = before
                raise
        n = data.shape[0]
        world = 1 if dctx is None else dctx.world_size
        per_epoch = math.ceil(math.ceil(n / world) / batch_size)
        total = epochs * per_epoch
        if dctx is not None or self.step_count < total:
            self._initialise(data)  # as the first step would: the same random numbers
        if dctx is not None:
            # every rank starts from rank 0's parameters, kernel and λ
            model_state, kernel_state = self.model.state_dict(), self.kernel.state_dict()
            dctx.broadcast_([*model_state.values(), *kernel_state.values(), self.log_lam])
        main = dctx is None or dctx.is_main
        bar = _progress_bar(total, self.step_count, progress and main)
        stop = False
        self._dist = dctx
        try:
            while self.step_count < total and not stop:
                epoch, index = divmod(self.step_count, per_epoch)
                order = _epoch_order(n, self.seed, epoch)
                if dctx is not None:
                    order = shard_order(order, dctx.rank, world)
                batch = data[order[index * batch_size : (index + 1) * batch_size].to(data.device)]
                record = self.step(batch, epoch=epoch)
                if scheduler is not None:
                    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        scheduler.step(-record["objective"])
                    else:
                        scheduler.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        objective=f"{record['objective']:.4g}",
                        lengthscale=f"{record['lengthscale']:.3g}",
                    )
                for cb in callbacks:
                    stop = bool(cb(self, record)) or stop
                if dctx is not None and callbacks:
                    stop = dctx.any(stop)  # all ranks stop together
                due = self.step_count % checkpoint_every == 0 or self.step_count == total
                if main and checkpoint is not None and (due or stop):
                    self.save_checkpoint(checkpoint)
            if dctx is not None:
                dctx.barrier()  # rank 0's last checkpoint is on disk before anyone returns
        finally:
            self._dist = None
            if bar is not None:
                bar.close()
        return self.history

    def _check_scheduler(self, scheduler: object) -> None:
        if scheduler is None:
            return
        kinds = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if not isinstance(scheduler, kinds):
            raise TypeError(
                "scheduler: expected a torch.optim.lr_scheduler scheduler (or None), got "
                f"{type(scheduler).__name__}"
            )
        if scheduler.optimizer not in (self.optimizer, self.kernel_optimizer):
            raise ValueError(
                "scheduler: it schedules an optimiser that is not this learner's; build it on "
                "learner.optimizer (or learner.kernel_optimizer)"
            )

    # ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's content (see :mod:`fastamort.checkpoint`)."""
        return _checkpoint.content(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s content; ValueError naming the difference, with
        nothing changed, when it was written by a learner set up differently."""
        _checkpoint.restore(self, state, source="state_dict")

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Writes the full training state atomically (a crash leaves the old file intact)."""
        _checkpoint.save(self, path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restores the state :meth:`save_checkpoint` wrote; ValueError naming the file and
        the difference (nothing changed) when it cannot be read, is corrupted, or was written
        for another model, kernel, optimizer or settings."""
        _checkpoint.restore(self, _checkpoint.read(path), source=str(path))


# --------------------------------------------------------------------------------------
def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _as_data(data: object, model: nn.Module) -> torch.Tensor:
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data: expected a tensor or a NumPy array, got {type(data).__name__}")
    if data.ndim == 0 or data.shape[0] == 0:
        raise ValueError(f"data: empty (shape {tuple(data.shape)})")
    if not data.is_floating_point():
        data = data.to(torch.get_default_dtype())
    if not bool(torch.isfinite(data).all()):
        raise ValueError("data: contains NaN or infinite values")
    param = next(iter(model.parameters()), None)
    if param is not None:
        data = data.to(device=param.device, dtype=param.dtype)
    return data


def _check_data_shape(data: torch.Tensor | None, obs_shape: tuple[int, ...] | None) -> None:
    if data is not None and obs_shape is not None and tuple(data.shape[1:]) != obs_shape:
        raise ValueError(
            f"data: observations of shape {tuple(data.shape[1:])} do not match the model's "
            f"{obs_shape} (data {tuple(data.shape)})"
        )


def _cat_latents(parts: list[Any]) -> Any:
    """Concatenates per-block latents: tensors, or tuples/lists/dicts of them."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, (tuple, list)):
        return type(first)(_cat_latents(list(items)) for items in zip(*parts, strict=True))
    if isinstance(first, dict):
        return {k: _cat_latents([p[k] for p in parts]) for k in first}
    raise TypeError(
        f"sleep_refresh < 1 needs latents made of tensors (or tuples/dicts of them), "
        f"got {type(first).__name__}"
    )


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="amortised learning")


def _check_finite_value(value: torch.Tensor, what: str, step: int) -> None:
    if not bool(torch.isfinite(value.detach()).all()):
        raise NonFiniteError(f"step {step}: the {what} is not finite ({float(value.detach())})")


def _check_finite_grads(named: Iterable[tuple[str, torch.Tensor]], step: int) -> None:
    # one sync for all of them
    name = first_nonfinite((p.grad, name) for name, p in named if p.grad is not None)
    if name is not None:
        raise NonFiniteError(
            f"step {step}: the gradient of parameter '{name}' is not finite; "
            "no parameter was changed"
        )
