"""The amortised-learning objective: a KRR estimate of the mean log-likelihood gradient.

With sleep samples (z_i, x_i) ~ p_θ, i = 1..M (drawn without gradient), a wake batch x_n,
n = 1..N, K = k(X_s, X_s) and K_sw = k(X_s, X_w):

* generic:  Ĵ(θ) = βᵀ f(θ),  f_i = log p_θ(z_i, x_i),  β = (K + λI)⁻¹ K_sw 1/N;
* exponential family (p_θ(x|z) = h(x) exp(η_θ(z)·S(x) − Ψ_θ(z))):
  Ĵ(θ) = Σ_i [C_i·η_θ(z_i) − β_i (Ψ_θ(z_i) − log p_θ(z_i))] + mean_n log h(x_n),
  C = (K + λI)⁻¹ K_sw S_w / N — the wake statistics S(x_n) enter exactly.

∇θ Ĵ is the KRR estimate of the mean ML gradient (1/N) Σ_n ∇θ log p_θ(x_n), in one backward
pass. The weights β and C depend only on the (detached) sleep x's, the wake batch and the
kernel, so they are computed without a graph, in float64, by one ``gram``, one fused
``gram_matmul`` (the M×N cross Gram is never stored) and one ``ridge_solve`` with 1 + P
right-hand sides — or, with fewer wake points N than 1 + P, the cross Gram K_sw (M×N) itself
as N right-hand sides, contracted with [1, S_w]/N afterwards (equal in exact arithmetic,
:func:`fastamort.solvers.krr_weights`). On the CPU from M = 1536 with M ≥ 50 right-hand sides
each, a float32 Cholesky refined in float64 to the same accuracy
(:func:`fastamort.solvers.exact.exact_solve`). The ridge is λI (not MλI).

For large M, ``solver=`` replaces that exact solve by Nyström, random Fourier features or
warm-started preconditioned CG (:mod:`fastamort.solvers`); the objective and its gradient are
formed from the weights in the same way, whatever solver produced them.

``lam=None`` picks λ, and ℓ when the kernel has none, on a grid: for an exponential-family
model the point whose gradient is closest to a prior-proposal importance-sampling gradient at
the wake batch (:mod:`fastamort.importance_rule`), otherwise by the Gaussian-process marginal
likelihood of the regression targets (:mod:`fastamort.hyperparameters`); ``kernel=None`` uses
a Gaussian kernel with the median heuristic. ``intercept=True`` adds an
unpenalised constant to the regression (:func:`add_intercept`).
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ._checks import check_int, finite_or_raise, is_real_scalar, traced
from .hyperparameters import (  # noqa: F401 (re-exported: fastamort.estimator.choose_lambda)
    LAMBDA_GRID,
    LAMBDA_MAX_POINTS,
    LAMBDA_TIE,
    check_rule,
    choose_hyperparameters,
    choose_lambda,
    pick_lambda,
    subsample_indices,
)
from .importance_rule import (
    IMPORTANCE_MAX_POINTS,
    ImportanceFailed,
    choose_by_importance,
    importance_weights,
)
from .kernels import Gaussian, Kernel
from .models.base import check_model, is_expfam
from .polynomial_trend import check_trend, trend_weights
from .solvers import SolverConfig, WarmStart, krr_dtype, krr_weights, solver_config

KRR_DTYPE = torch.float64


@dataclass
class AmortisedEstimate:
    """Ĵ and what went into it (all but ``objective`` detached)."""

    objective: torch.Tensor
    beta: torch.Tensor  # (M,)
    coeffs: torch.Tensor | None  # (M, P) for the exponential-family estimator
    lam: float
    kernel: Kernel
    estimator: str
    sleep: tuple[Any, torch.Tensor]
    #: how the weights were solved: ``solver`` and, per solver, e.g. ``iterations``,
    #: ``products``, ``residual``, ``warm_started`` (cg), ``n_inducing`` (nystrom).
    info: dict[str, Any] = field(default_factory=dict)
    #: the solution (K + λI)⁻¹ R before :func:`add_intercept` (None: the same as the weights)
    solution: torch.Tensor | None = field(default=None, repr=False)

    def warm_start(self, *, aligned: bool = False) -> WarmStart:
        """This estimate's sleep points and ridge solution, to warm-start the next CG solve
        (``aligned``: the next sleep set continues this one row by row)."""
        w = self.solution
        if w is None:
            w = (
                self.beta[:, None]
                if self.coeffs is None
                else torch.cat([self.beta[:, None], self.coeffs], 1)
            )
        return WarmStart(self.sleep[1].detach(), w.detach(), aligned)


def check_lam_scalar(lam: object) -> float | torch.Tensor:
    """One λ >= 0 for the estimator: a real number (as a float) or a one-element real tensor
    (as a 0-d tensor, gradients kept). The ops' per-problem λ is checked by
    :func:`fastamort.ops.ridge_solve.check_lam`."""
    if isinstance(lam, torch.Tensor):
        if lam.numel() != 1:
            raise ValueError(
                f"lam: expected a number or a one-element tensor, got shape {tuple(lam.shape)}"
            )
        if lam.dtype == torch.bool or lam.is_complex():
            raise TypeError(f"lam: expected a real tensor, got {lam.dtype}")
        value, lam = float(lam.detach()), lam.reshape(())
    elif is_real_scalar(lam):
        value = lam = float(lam)
    else:
        raise TypeError(f"lam: expected a number or a one-element tensor, got {type(lam).__name__}")
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"lam: must be finite and >= 0, got {value}")
    return lam


def draw_sleep(
    model: torch.nn.Module, n: int, *, name: str = "n_sleep", minimum: int = 2
) -> tuple[Any, torch.Tensor]:
    """(z, x) ~ p_θ without gradient; x as a detached tensor (n, *obs_shape)."""
    n = check_int(n, name, minimum)
    with torch.no_grad():
        z, x = model.sample(n)
    if not isinstance(x, torch.Tensor) or x.shape[:1] != (n,):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"model.sample({n}) must return (z, x) with x of shape ({n}, ...), got {got}"
        )
    return z, x.detach()


def _param_dtype_device(model: torch.nn.Module) -> tuple[torch.dtype, torch.device] | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return None


def _latent_tensors(z: Any) -> list[torch.Tensor]:
    """The tensors of a latent (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(z, torch.Tensor):
        return [z]
    if isinstance(z, dict):
        z = list(z.values())
    if isinstance(z, (tuple, list)):
        return [t for item in z for t in _latent_tensors(item)]
    return []


def check_sleep(
    sleep: object, model: torch.nn.Module, name: str = "sleep", minimum: int = 2
) -> tuple[Any, torch.Tensor]:
    """A given sleep set ``(z, x)``: x a finite floating tensor (n >= ``minimum``, n, ...) of the
    model's dtype and device; a tensor z with n rows; every tensor in z finite. Returns
    ``(z, x.detach())``; errors name ``name``."""
    if not isinstance(sleep, (tuple, list)) or len(sleep) != 2:
        raise TypeError(f"{name}: expected a pair (z, x) of sleep samples")
    z, x = sleep
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a tensor, got {type(x).__name__}")
    if x.ndim == 0 or x.shape[0] < minimum:
        raise ValueError(
            f"{name}: x must be a tensor of shape (n, *obs_shape) with n >= {minimum}, "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name}: x must have a floating dtype, got {x.dtype}")
    like = _param_dtype_device(model)
    if like is not None and x.dtype != like[0]:
        raise TypeError(
            f"{name}: x has dtype {x.dtype} but the model's parameters are {like[0]} "
            "(convert the sleep samples or the model)"
        )
    if like is not None and x.device != like[1]:
        raise ValueError(f"{name}: x is on {x.device} but the model is on {like[1]}")
    checks = [(x, f"{name}: x contains NaN or infinite values")]
    if not traced():  # (traced: all checked at once by one registered op, below)
        x, checks = finite_or_raise(x, *checks), []
    if isinstance(z, torch.Tensor) and (z.ndim == 0 or z.shape[0] != x.shape[0]):
        raise ValueError(
            f"{name}: z must have one row per sample of x ({x.shape[0]}), "
            f"got shape {tuple(z.shape)}"
        )
    z_message = f"{name}: z contains NaN or infinite values"
    checks += [(t, z_message) for t in _latent_tensors(z) if t.is_floating_point()]
    return z, finite_or_raise(x, *checks).detach()


def resolve_estimator(model: object, estimator: str) -> str:
    if estimator not in ("auto", "generic", "expfam"):
        raise ValueError(f"estimator: expected 'auto', 'generic' or 'expfam', got {estimator!r}")
    if estimator == "auto":
        return "expfam" if is_expfam(model) else "generic"
    if estimator == "expfam" and not is_expfam(model):
        raise ValueError(
            f"estimator: 'expfam' needs sufficient_stats, natural_params, log_normaliser and "
            f"log_prior on the model; {type(model).__name__} lacks some"
        )
    return estimator


def check_wake(x_wake: object, sleep_x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x_wake, torch.Tensor):
        raise TypeError(f"x_wake: expected a torch.Tensor, got {type(x_wake).__name__}")
    if x_wake.ndim == 0 or x_wake.shape[0] == 0:
        raise ValueError(f"x_wake: empty batch (shape {tuple(x_wake.shape)})")
    if not x_wake.is_floating_point():
        raise TypeError(f"x_wake: expected a floating dtype, got {x_wake.dtype}")
    if x_wake.shape[1:] != sleep_x.shape[1:]:
        raise ValueError(
            f"x_wake: observations of shape {tuple(x_wake.shape[1:])} do not match the "
            f"model's {tuple(sleep_x.shape[1:])} (x_wake {tuple(x_wake.shape)})"
        )
    if x_wake.device != sleep_x.device:
        raise ValueError(
            f"x_wake: device {x_wake.device} differs from the model's {sleep_x.device}"
        )
    return finite_or_raise(x_wake, (x_wake, "x_wake: contains NaN or infinite values"))


def regression_parts(model, z, x, estimator: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The regression targets at the sleep points in two parts (with the graph to θ).

    generic: (f (M,), None) with f = log p(z, x). expfam: (Ψ(z) − log p(z) (M,), η(z) (M, P)).
    The estimator's objective takes them as they are: stacking them into one (M, 1 + P) tensor
    would copy η, and its backward would fill an M × (1 + P) gradient.
    """
    if estimator == "generic":
        return model.log_joint(z, x).reshape(-1), None
    targets = getattr(model, "expfam_targets", None)  # optional: ExpFamModel has it
    if callable(targets):
        first, eta = targets(z)
    else:
        first, eta = model.log_normaliser(z) - model.log_prior(z), model.natural_params(z)
    return first.reshape(-1), eta


def stacked_targets(first: torch.Tensor, eta: torch.Tensor | None) -> torch.Tensor:
    """The parts of :func:`regression_parts` as one (M, 1 + P) matrix [first, η]."""
    first = first.reshape(-1, 1)
    return first if eta is None else torch.cat([first, eta], dim=1)


def regression_targets(model, z, x, estimator: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets of the regression at the sleep points (with the graph to θ).

    generic: (f (M, 1), None) with f = log p(z, x). expfam: (T (M, 1 + P), S(x) (M, P)) with
    T = [Ψ(z) − log p(z), η(z)].
    """
    first, eta = regression_parts(model, z, x, estimator)
    stats = None if eta is None else model.sufficient_stats(x)
    return stacked_targets(first, eta), stats


def wake_vectors(
    model, kernel: Kernel, x_wake: torch.Tensor, estimator: str, dtype: torch.dtype = KRR_DTYPE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Featurised wake points (N, D) and the wake weights V = [1, S_w]/N (or 1/N), in
    ``dtype``."""
    with torch.no_grad():
        fw = kernel.features(x_wake).to(dtype)
        n = x_wake.shape[0]
        ones = torch.ones(n, 1, dtype=dtype, device=fw.device)
        if estimator == "generic":
            return fw, ones / n
        return fw, torch.cat([ones, model.sufficient_stats(x_wake).to(dtype)], 1) / n


def solve_dtype(
    config: SolverConfig, points: torch.Tensor, lam: float, kernel: Kernel
) -> torch.dtype:
    """The regression's dtype: :func:`fastamort.solvers.krr_dtype` for the exact solver,
    float64 for the others."""
    if config.solver != "exact":
        return KRR_DTYPE
    return krr_dtype(points, lam, kernel.backend, config.precision)


def objective_from_weights(
    model,
    weights: torch.Tensor,
    parts: tuple[torch.Tensor, torch.Tensor | None],
    estimator: str,
    x_wake: torch.Tensor,
) -> torch.Tensor:
    """Ĵ from the (constant) KRR weights W (M, 1 + P) and the targets' parts (graph to θ), as
    returned by :func:`regression_parts`."""
    first, eta = parts
    beta = weights[:, 0]
    if estimator == "generic" or eta is None:
        return (beta.to(first.dtype) * first).sum()
    objective = (weights[:, 1:].to(eta.dtype) * eta).sum() - (beta.to(first.dtype) * first).sum()
    log_h = getattr(model, "log_base_measure", None)
    if callable(log_h):
        objective = objective + log_h(x_wake).mean().to(objective.dtype)
    return objective


def add_intercept(
    weights: torch.Tensor, model, x_wake: torch.Tensor, estimator: str
) -> torch.Tensor:
    """The weights (M, 1 + P) of the regression with an unpenalised constant: the prediction
    is t̄ + k(x)ᵀ(K + λI)⁻¹(t − t̄) with t̄ the mean of the targets, so each column of the
    weights sums to the total of its wake weights V = [1, S_w]/N: W + 1(1ᵀV − 1ᵀW)/M.

    Without it the prediction falls back to 0 away from the sleep points, where wake points
    lie while the model is wrong; with it, to the mean. For one gradient of a fixed model far
    from its data that is better (gradient-estimation mixture, evidence rule, M = 2000, 3
    seeds: relative error 0.04–0.23 against 0.14–0.65 without), but in training it pulls
    every wake point the sleep set does not cover towards the model's average sample: the
    circle experiment's generator then learns blurred Gabors (quick configuration: orientation
    error 23° against 3.8° without, template correlation 0.46 against 0.99), and ICA's noise
    σ grows (1.18 against 0.47). Hence off by default.
    """
    with torch.no_grad():
        n = x_wake.shape[0]
        total = torch.ones(1, dtype=weights.dtype, device=weights.device)
        if estimator != "generic":
            s = model.sufficient_stats(x_wake).to(weights.dtype).reshape(n, -1).mean(0)
            total = torch.cat([total, s])
        return weights + (total - weights.sum(0)) / weights.shape[0]


def resolve_rule(rule: str, model: object, *, explicit: bool) -> str:
    """The rule that runs: ``"importance"`` needs an exponential-family model with parameters
    to differentiate; by default (``explicit`` False) other models get ``"evidence"``."""
    if rule != "importance" or importance_capable(model):
        return rule
    if explicit:
        raise ValueError(
            "lam: the 'importance' rule needs an exponential-family model (sufficient_stats, "
            "natural_params, log_normaliser, log_prior) with parameters that require grad; "
            f"{type(model).__name__} is not one: use lam='evidence' or 'loo'"
        )
    return "evidence"


def importance_capable(model: object) -> bool:
    return is_expfam(model) and any(
        p.requires_grad
        for p in model.parameters()  # type: ignore[attr-defined]
    )


def _latent_rows(z: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of a latent (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(z, torch.Tensor):
        return z[idx]
    if isinstance(z, dict):
        return {k: _latent_rows(v, idx) for k, v in z.items()}
    if isinstance(z, (tuple, list)):
        return type(z)(_latent_rows(v, idx) for v in z)
    raise TypeError(f"cannot take rows of a latent of type {type(z).__name__}")


class ImportanceRuleWarning(UserWarning):
    """The ``"importance"`` rule could not score any candidate; the evidence chose instead."""


def apply_rule(
    rule: str, model, z: Any, xs: torch.Tensor, fs: torch.Tensor, x_wake: torch.Tensor,
    kernel: Kernel, parts: tuple[torch.Tensor, torch.Tensor | None], estimator: str, *,
    explicit: bool, choose_ell: bool,
) -> tuple[float, float | None, dict[str, Any]]:  # fmt: skip
    """(λ, ℓ or None, info) by the rule named ``rule`` (``explicit``: named by the caller)."""
    rule = resolve_rule(rule, model, explicit=explicit)
    if rule == "importance":
        try:
            lam, ell, info = choose_importance(
                model, z, xs, fs, x_wake, kernel, parts, estimator, choose_ell
            )
            return lam, ell, {"lam_rule": rule, **info}
        except ImportanceFailed as exc:
            warnings.warn(
                f"lam: the 'importance' rule could not score any (ℓ, λ) ({exc}); the "
                "'evidence' rule chose instead",
                ImportanceRuleWarning,
                stacklevel=4,
            )
            rule = "evidence"
    with torch.no_grad():
        stats = None if parts[1] is None else model.sufficient_stats(xs)
        lam, ell = choose_hyperparameters(
            fs.to(KRR_DTYPE), kernel, stacked_targets(*parts), stats,
            rule=rule, lengthscale=choose_ell,
        )  # fmt: skip
    return lam, ell, {"lam_rule": rule}


def choose_importance(
    model, z: Any, xs: torch.Tensor, fs: torch.Tensor, x_wake: torch.Tensor, kernel: Kernel,
    parts: tuple[torch.Tensor, torch.Tensor | None], estimator: str, choose_ell: bool,
) -> tuple[float, float | None, dict[str, Any]]:  # fmt: skip
    """(λ, ℓ or None, info) by the ``"importance"`` rule (:mod:`fastamort.importance_rule`)
    on this sleep set (a fixed random subset of :data:`IMPORTANCE_MAX_POINTS` when larger)."""
    idx = subsample_indices(xs.shape[0], IMPORTANCE_MAX_POINTS, xs.device)
    if idx is not None:
        z, xs, fs = _latent_rows(z, idx), xs[idx], fs[idx]
        parts = regression_parts(model, z, xs, estimator)
    params = [p for p in model.parameters() if p.requires_grad]
    ref_parts = parts if estimator == "expfam" else regression_parts(model, z, xs, "expfam")

    def gradient_of(weights: torch.Tensor, parts=parts, estimator=estimator) -> torch.Tensor:
        objective = objective_from_weights(model, weights, parts, estimator, x_wake)
        grads = (
            torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
            if objective.requires_grad
            else [None] * len(params)
        )
        return torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).reshape(-1).to(KRR_DTYPE)
                for p, g in zip(params, grads, strict=True)
            ]
        )

    with torch.no_grad():
        w_is, ess = importance_weights(
            ref_parts[1], model.log_normaliser(z), model.sufficient_stats(x_wake)
        )
        fw, v = wake_vectors(model, kernel, x_wake, estimator)
    reference = gradient_of(w_is, ref_parts, "expfam")
    if not bool(torch.isfinite(reference).all()):
        raise ImportanceFailed("the importance-sampling gradient is not finite")
    lam, ell, info = choose_by_importance(
        fs.to(KRR_DTYPE), fw, v, kernel, gradient_of, reference, lengthscale=choose_ell
    )
    return lam, ell, {**info, "importance_ess": float(ess.median())}


def amortised_estimate(
    model: torch.nn.Module,
    x_wake: torch.Tensor,
    *,
    n_sleep: int = 2000,
    sleep: tuple[Any, torch.Tensor] | None = None,
    kernel: Kernel | None = None,
    lam: float | torch.Tensor | str | None = None,
    estimator: str = "auto",
    solver: str | SolverConfig = "exact",
    n_inducing: int | None = None,
    n_features: int | None = None,
    tol: float | None = None,
    inducing: str | None = None,
    warm_start: AmortisedEstimate | WarmStart | None = None,
    intercept: bool = False,
    trend: int | None = None,
) -> AmortisedEstimate:
    """The KRR estimate of the mean ML gradient over ``x_wake`` with its ingredients
    (weights, λ, kernel, sleep set); its ``objective`` is :func:`amortised_objective`.

    Args:
        model: a model (``sample(n) -> (z, x)``, ``log_joint(z, x)``; see
            :mod:`fastamort.models.base`).
        x_wake: a batch of data, (N, *obs_shape).
        n_sleep: number M of sleep samples drawn when ``sleep`` is not given (≥ 2).
        sleep: reuse these sleep samples ``(z, x)``.
        kernel: a :class:`fastamort.kernels.Kernel`; default Gaussian. A kernel without a
            lengthscale (``Gaussian()``) gets the median heuristic on the sleep set, in
            place (:meth:`~fastamort.kernels.Kernel.init_from`).
        lam: the ridge λ, or the name of a rule that chooses it, with ℓ when the kernel's
            lengthscale was not given: ``"importance"`` (the default, None, for
            exponential-family models with parameters to train) takes the grid point whose
            θ-gradient is closest to the prior-proposal importance-sampling gradient at the
            wake batch, on this sleep set (:mod:`fastamort.importance_rule`; one Cholesky
            factorisation and one backward pass per candidate); ``"evidence"`` (the default
            for other models) the (ℓ, λ) of largest Gaussian-process marginal likelihood of
            the targets; ``"loo"``: λ by leave-one-out error at the median-heuristic
            lengthscale (the first rule). ``info["lam_rule"]`` names the rule that ran.
            The rules run on every call (the importance rule: 2–3 s at M = 2000, 10–13 s at
            M = 4000 on 2 CPU threads); in a loop, reuse ``est.lam`` and ``est.kernel`` of one
            call, or train with :class:`fastamort.AmortisedLearner`.
        estimator: "auto" (exponential family when the model provides it), "generic", "expfam".
        solver: how (K + λI)⁻¹ is applied (:mod:`fastamort.solvers`): "exact" (Cholesky,
            O(M³) time, O(M²) memory), "nystrom" (``n_inducing`` points, O(M m²)), "rff"
            (``n_features`` random Fourier features, O(M D²)) or "cg" (preconditioned
            conjugate gradient to relative residual ``tol``, fused K products, O(M²) per
            iteration but O(M) memory); or a :class:`fastamort.solvers.SolverConfig` with the
            options below and the exact solver's ``precision``. The loose options
            ``n_inducing``, ``n_features``, ``tol`` and ``inducing`` beside a solver name are
            deprecated (a :class:`FutureWarning`): set them in the config.
        n_inducing: Nyström inducing points, or the CG preconditioner's rank (default 1000).
        n_features: random Fourier features (default 2000).
        tol: CG relative-residual tolerance (default 1e-6).
        inducing: "uniform" (default) or "greedy" (pivoted Cholesky) inducing points
            (nystrom, cg).
        warm_start: the previous step's :class:`AmortisedEstimate` (or a
            :class:`fastamort.solvers.WarmStart`) to start CG from.
        intercept: regress with an unpenalised constant (the mean of the targets), so that
            far from the sleep points the prediction is the mean rather than 0
            (:func:`add_intercept`: better for one gradient of a model far from its data,
            worse in training); False (default): the plain KRR of the formula above.
        trend: the degree (0, 1 or 2) of an unpenalised polynomial trend in the kernel's
            features beside the kernel (semi-parametric KRR, :mod:`fastamort.polynomial_trend`):
            every polynomial of that degree is reproduced exactly, so the kernel's smoothing
            no longer inflates a Gaussian likelihood's residual (on ICA at σ = 0.1: an
            estimated E‖x − As‖² of 1.05× its value against 2.6×). Exact solver only; a λ
            rule chooses λ (and ℓ) for the plain regression. None (default): no trend.

    Returns:
        An :class:`AmortisedEstimate`.
    """
    check_model(model)
    estimator = resolve_estimator(model, estimator)
    config = solver_config(solver, n_inducing, n_features, tol, inducing, stacklevel=3)
    trend = check_trend(trend)
    if trend is not None and (config.solver != "exact" or intercept or warm_start is not None):
        raise ValueError(
            "trend: a polynomial trend needs solver='exact', without intercept=True (the "
            "trend's degree 0 is the constant) and without warm_start"
        )
    if trend is not None and traced():
        raise ValueError(
            "trend: the polynomial trend's checks depend on the data and cannot run under "
            "torch.compile or a torch.func transform; call amortised_estimate eagerly"
        )
    if isinstance(warm_start, AmortisedEstimate):
        warm_start = warm_start.warm_start()
    elif warm_start is not None and not isinstance(warm_start, WarmStart):
        raise TypeError(
            "warm_start: expected an AmortisedEstimate or a fastamort.solvers.WarmStart, "
            f"got {type(warm_start).__name__}"
        )
    if sleep is None:
        z, xs = draw_sleep(model, n_sleep)
    else:
        z, xs = check_sleep(sleep, model)
    rule = check_rule(lam)
    if rule is None:
        lam = check_lam_scalar(lam)
    elif traced():
        raise ValueError(
            f"lam: the rule {rule!r} chooses λ from the data and cannot run under "
            "torch.compile or a torch.func transform; pass lam= a number (e.g. est.lam of an "
            "eager amortised_estimate)"
        )
    x_wake = check_wake(x_wake, xs)
    if kernel is None:
        kernel = Gaussian().to(xs.device)
    elif not isinstance(kernel, Kernel):
        raise TypeError(f"kernel: expected a fastamort.kernels.Kernel, got {type(kernel).__name__}")
    if traced():  # no data-dependent branch in a compiled graph: the kernel must be set up
        torch._assert_async(
            kernel.initialised, "kernel: give a lengthscale (or call init_from) before compiling"
        )
        choose_ell = False
    else:
        choose_ell = not bool(kernel.initialised)
    if choose_ell:
        kernel.init_from(xs)  # median heuristic on this sleep set (the kernel keeps it)

    parts = regression_parts(model, z, xs, estimator)
    with torch.no_grad():
        fs = kernel.features(xs)
    rule_info: dict[str, Any] = {}
    if rule is None:
        lam_value = float(lam)  # type: ignore[arg-type]
    else:
        lam_value, ell, rule_info = apply_rule(
            rule, model, z, xs, fs, x_wake, kernel, parts, estimator,
            explicit=lam is not None, choose_ell=choose_ell,
        )  # fmt: skip
        if ell is not None:
            with torch.no_grad():
                kernel.log_lengthscale.fill_(math.log(ell))
    with torch.no_grad():
        dtype = KRR_DTYPE if trend is not None else solve_dtype(config, fs, lam_value, kernel)
        fw, v = wake_vectors(model, kernel, x_wake, estimator, dtype)
        if trend is not None:
            weights, info = trend_weights(kernel, fs, fw, v, lam_value, trend)
        else:
            weights, info = krr_weights(
                config, kernel, fs.to(dtype), fw, v, lam_value, warm_start=warm_start
            )
        info["dtype"] = str(dtype).removeprefix("torch.")
        info.update(rule_info)
        solution = weights
        if intercept:
            weights = add_intercept(weights, model, x_wake, estimator)
    objective = objective_from_weights(model, weights, parts, estimator, x_wake)
    beta = weights[:, 0]
    coeffs = None if estimator == "generic" else weights[:, 1:]
    return AmortisedEstimate(
        objective, beta, coeffs, lam_value, kernel, estimator, (z, xs), info,
        solution=solution if intercept else None,
    )  # fmt: skip


def amortised_objective(
    model: torch.nn.Module, x_wake: torch.Tensor, **options: Any
) -> torch.Tensor:
    """Scalar Ĵ(θ) whose gradient is the KRR estimate of the mean ML gradient over ``x_wake``:
    ``amortised_estimate(model, x_wake, **options).objective``, with the same arguments
    (:func:`amortised_estimate`).

    Returns:
        0-d tensor; ``(-objective).backward()`` then an optimiser step ascends the likelihood.

    Example:
        >>> import torch, fastamort
        >>> from fastamort.models import FactorAnalysis
        >>> _ = torch.manual_seed(0)
        >>> model = FactorAnalysis(obs_dim=3, latent_dim=1)
        >>> x = torch.randn(50, 3)
        >>> fastamort.amortised_objective(model, x, n_sleep=300).backward()
        >>> model.weight.grad.shape
        torch.Size([3, 1])
    """
    return amortised_estimate(model, x_wake, **options).objective


# One signature, written once: help() and the API docs show amortised_estimate's arguments.
amortised_objective.__signature__ = inspect.signature(amortised_estimate).replace(  # type: ignore[attr-defined]
    return_annotation="torch.Tensor"
)
