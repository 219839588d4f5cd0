"""The settings of an :class:`fastamort.AmortisedLearner`, checked once and frozen.

:class:`LearnerConfig` holds every constructor option that is a setting rather than an object
(the model, kernel and optimisers are objects): the sleep sizes, the λ rule, the estimator,
kernel learning, the seed, gradient clipping, the solver, the sleep-set refresh and the
polynomial trend. A
checkpoint records them (:meth:`LearnerConfig.hyperparameters`) and a resume must match them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ._checks import check_int, check_positive
from .estimator import check_lam_scalar
from .hyperparameters import LEARNED_LAMBDA_RANGE, check_rule
from .polynomial_trend import check_trend
from .solvers import SolverConfig

__all__ = ["LearnerConfig"]


@dataclass(frozen=True)
class LearnerConfig:
    """Validated learner settings (see :class:`fastamort.AmortisedLearner` for each).

    ``lam`` is kept as given (a number, a rule name, or None for the default rule);
    :attr:`lam_rule` is the rule that chooses λ at the first step (None: λ given).
    ``warm_start`` None means: only when ``sleep_refresh`` < 1, and only for ``solver="cg"``.
    """

    n_sleep: int = 2000
    n_held_out: int = 200
    lam: float | str | None = None
    estimator: str = "auto"
    learn_kernel: bool = True
    seed: int = 0
    max_grad_norm: float | None = None
    solver: SolverConfig = field(default_factory=SolverConfig)
    warm_start: bool | None = None
    sleep_refresh: float = 1.0
    trend: int | None = None

    def __post_init__(self) -> None:
        def fix(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        fix("n_sleep", check_int(self.n_sleep, "n_sleep", 2))
        fix("n_held_out", check_int(self.n_held_out, "n_held_out", 1 if self.learn_kernel else 0))
        if self.lam == "importance":
            raise ValueError(
                "lam: the 'importance' rule needs each step's wake batch and is not available "
                "to the learner; use 'loo' (the default) or 'evidence'"
            )
        if check_rule(self.lam) is None:
            lam = float(check_lam_scalar(self.lam))
            lo, hi = LEARNED_LAMBDA_RANGE
            if not lo <= lam <= hi:
                raise ValueError(
                    f"lam: must be > 0 and within LEARNED_LAMBDA_RANGE [{lo:g}, {hi:g}], got {lam}"
                )
            fix("lam", lam)
        seed = check_int(self.seed, "seed", 0)
        if seed >= 2**32:
            raise ValueError(f"seed: expected an integer in [0, 2**32), got {seed}")
        fix("seed", seed)
        if self.max_grad_norm is not None:
            fix("max_grad_norm", check_positive(self.max_grad_norm, "max_grad_norm"))
        if not isinstance(self.solver, SolverConfig):
            raise TypeError(
                "solver: expected a fastamort.solvers.SolverConfig, got "
                f"{type(self.solver).__name__}"
            )
        refresh = self.sleep_refresh
        if (
            isinstance(refresh, bool)
            or not isinstance(refresh, (int, float))
            or not 0 <= refresh <= 1
        ):
            raise ValueError(f"sleep_refresh: expected a number in [0, 1], got {refresh!r}")
        fix("sleep_refresh", float(refresh))
        if self.warm_start is not None:
            fix("warm_start", bool(self.warm_start))
        fix("trend", check_trend(self.trend))
        if self.trend is not None and self.solver.solver != "exact":
            raise ValueError(
                f"trend: a polynomial trend needs solver='exact', not {self.solver.solver!r}"
            )

    @property
    def uses_warm_start(self) -> bool:
        """Whether each CG solve starts from the previous step's solution: ``warm_start``, or
        by default (None) when ``sleep_refresh`` < 1; only with ``solver="cg"``."""
        warm = self.sleep_refresh < 1.0 if self.warm_start is None else self.warm_start
        return warm and self.solver.solver == "cg"

    @property
    def lam_rule(self) -> str | None:
        """The rule that chooses λ at the first step ("loo" by default), or None (λ given)."""
        return "loo" if self.lam is None else check_rule(self.lam)

    @property
    def initial_lam(self) -> float | None:
        """The given λ, or None when a rule chooses it."""
        return None if self.lam_rule is not None else float(self.lam)  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> LearnerConfig:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def hyperparameters(self, estimator: str) -> dict[str, Any]:
        """The settings a checkpoint records and a resume must match, with the resolved
        ``estimator`` (:data:`fastamort.checkpoint.HYPERPARAMETERS`)."""
        s = self.solver
        return {
            "n_sleep": self.n_sleep,
            "n_held_out": self.n_held_out,
            "estimator": estimator,
            "learn_kernel": self.learn_kernel,
            "seed": self.seed,
            "max_grad_norm": self.max_grad_norm,
            "solver": s.solver,
            "n_inducing": s.n_inducing,
            "n_features": s.n_features,
            "tol": s.tol,
            "inducing": s.inducing,
            "warm_start": self.uses_warm_start,
            "sleep_refresh": self.sleep_refresh,
            "lam": self.lam,
            "trend": self.trend,
        }
