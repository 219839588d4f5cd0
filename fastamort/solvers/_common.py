"""What the solvers share: the solver names and defaults, argument checks, row chunking and the
primal ("feature") ridge that Nyström and random Fourier features both reduce to.

With a feature map φ: R^D → R^r and k(x, y) ≈ φ(x)·φ(y), write Φ_s = φ(X_s) (M×r) and
Φ_w = φ(X_w) (N×r). The estimator's weights on the sleep points are

    W = (Φ_s Φ_sᵀ + λI)⁻¹ Φ_s Φ_wᵀ V = Φ_s (Φ_sᵀΦ_s + λI)⁻¹ Φ_wᵀ V        (push-through identity),

one r×r ridge solve instead of an M×M one: O(M r²) time, and O(r² + chunk·r) memory because
Φ_s is produced and consumed in row chunks, twice (once for Φ_sᵀΦ_s, once for Φ_s·y). The ridge
is λ on the diagonal only (the authors' random-feature ridge added λ to every entry).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from .._checks import is_real_scalar
from ..ops import ridge_solve

KRR_DTYPE = torch.float64

#: The solvers of :func:`fastamort.amortised_objective` (``solver=``).
SOLVERS = ("exact", "nystrom", "rff", "cg")
#: Default number of inducing points (Nyström) and rank of the CG preconditioner.
DEFAULT_N_INDUCING = 1000
#: Default number of random Fourier features.
DEFAULT_N_FEATURES = 2000
#: Default CG stopping rule: every column's relative residual ‖b − A w‖ / ‖b‖ ≤ tol.
DEFAULT_TOL = 1e-6
#: Default cap on CG iterations.
DEFAULT_MAX_ITER = 200
#: Inducing-point rules: uniform subsample, or greedy pivoted Cholesky (largest residual
#: variance first).
INDUCING_RULES = ("uniform", "greedy")
#: Precision of the exact solver's kernel ridge regression: "auto" (float32 for float32 points
#: where that is safe, :func:`fastamort.solvers.exact.krr_dtype`), "float64" or "float32".
PRECISIONS = ("auto", "float64", "float32")
#: Elements (float64) of one chunk of features: 2^23 ≈ 64 MiB.
CHUNK_ELEMENTS = 1 << 23
#: Contraction order of T ᵀ(K + λI)⁻¹ G (T the targets, G a cross Gram): "auto" solves against
#: whichever of the two has fewer columns; "targets" / "gram" force one side (tests compare
#: the two orders, which are equal in exact arithmetic).
CONTRACTION = "auto"


def solve_against_gram(n_targets: int, n_points: int) -> bool:
    """Whether a KRR product Tᵀ(K + λI)⁻¹G with ``n_targets`` target columns and a cross Gram G
    to ``n_points`` points is cheaper as ((K + λI)⁻¹G) then Tᵀ: when there are fewer points
    than targets (exponential-family models on images: 2D + 1 targets against a wake batch of
    100 or a held-out set of M/10)."""
    if CONTRACTION == "auto":
        return n_points < n_targets
    if CONTRACTION not in ("targets", "gram"):
        raise ValueError(f"CONTRACTION: expected 'auto', 'targets' or 'gram', got {CONTRACTION!r}")
    return CONTRACTION == "gram"


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SolverConfig:
    """A validated choice of solver and its options (defaults filled in).

    Args:
        solver: "exact" (Cholesky of the M×M system), "nystrom", "rff" or "cg".
        n_inducing: Nyström inducing points m (nystrom), or rank of the Nyström /
            pivoted-Cholesky preconditioner (cg); default :data:`DEFAULT_N_INDUCING`,
            clamped to M.
        n_features: random Fourier features D (rff); default :data:`DEFAULT_N_FEATURES`.
        tol: CG relative-residual tolerance; default :data:`DEFAULT_TOL`.
        inducing: "uniform" or "greedy" (pivoted Cholesky) choice of the inducing points.
        max_iter: CG iteration cap; default :data:`DEFAULT_MAX_ITER`.
        precision: dtype of the exact solver's Gram matrices and solves: "auto" (float32 for
            float32 points at large M when λ keeps the solve well conditioned, else float64;
            :func:`fastamort.solvers.exact.krr_dtype`), "float64" or "float32".
    """

    solver: str = "exact"
    n_inducing: int | None = None
    n_features: int | None = None
    tol: float | None = None
    inducing: str = "uniform"
    max_iter: int | None = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        s = self.solver
        if s not in SOLVERS:
            raise ValueError(f"solver: expected one of {', '.join(map(repr, SOLVERS))}, got {s!r}")
        if self.n_inducing is not None:
            if s not in ("nystrom", "cg"):
                raise ValueError(f"n_inducing: only used by solver='nystrom' or 'cg', not {s!r}")
            _positive_int(self.n_inducing, "n_inducing")
        if self.n_features is not None:
            if s != "rff":
                raise ValueError(f"n_features: only used by solver='rff', not {s!r}")
            _positive_int(self.n_features, "n_features")
        if self.tol is not None:
            if s != "cg":
                raise ValueError(f"tol: only used by solver='cg', not {s!r}")
            tol = self.tol
            if not is_real_scalar(tol) or not 0 < tol < 1:
                raise ValueError(f"tol: expected a number in (0, 1), got {tol!r}")
        if self.inducing not in INDUCING_RULES:
            raise ValueError(
                f"inducing: expected one of {', '.join(map(repr, INDUCING_RULES))}, "
                f"got {self.inducing!r}"
            )
        if self.max_iter is not None:
            _positive_int(self.max_iter, "max_iter")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision: expected one of {', '.join(map(repr, PRECISIONS))}, "
                f"got {self.precision!r}"
            )
        if self.precision != "auto" and s != "exact":
            raise ValueError(f"precision: only used by solver='exact', not {s!r}")

    @property
    def rank(self) -> int:
        return DEFAULT_N_INDUCING if self.n_inducing is None else self.n_inducing

    @property
    def features(self) -> int:
        return DEFAULT_N_FEATURES if self.n_features is None else self.n_features

    @property
    def rtol(self) -> float:
        return DEFAULT_TOL if self.tol is None else float(self.tol)

    @property
    def iterations(self) -> int:
        return DEFAULT_MAX_ITER if self.max_iter is None else self.max_iter


def solver_config(
    solver: str | SolverConfig,
    n_inducing: int | None = None,
    n_features: int | None = None,
    tol: float | None = None,
    inducing: str | None = None,
    *,
    stacklevel: int = 3,
) -> SolverConfig:
    """``solver`` as a :class:`SolverConfig`: a config as it is, or a name with its loose
    options (deprecated: a :class:`FutureWarning` at ``stacklevel`` names them). Loose options
    beside a config are an error."""
    loose = {"n_inducing": n_inducing, "n_features": n_features, "tol": tol, "inducing": inducing}
    given = {k: v for k, v in loose.items() if v is not None}
    if isinstance(solver, SolverConfig):
        if given:
            raise ValueError(
                f"{', '.join(given)}: set in the SolverConfig passed as solver=, not beside it"
            )
        return solver
    config = SolverConfig(solver, **given)
    if given:
        options = ", ".join(f"{k}={v!r}" for k, v in given.items())
        warnings.warn(
            f"{', '.join(given)}: loose solver options are deprecated and will be removed; "
            f"pass solver=fastamort.SolverConfig({solver!r}, {options})",
            FutureWarning,
            stacklevel=stacklevel,
        )
    return config


def row_chunks(n: int, width: int, elements: int | None = None) -> Iterator[slice]:
    """Row slices of an (n, width) array with about ``elements`` (default
    :data:`CHUNK_ELEMENTS`) entries each."""
    rows = max(1, (CHUNK_ELEMENTS if elements is None else elements) // max(1, width))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


FeatureMap = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def feature_ridge_weights(
    feature_map: FeatureMap,
    fs: torch.Tensor,
    fw: torch.Tensor,
    v: torch.Tensor | None,
    lam: float,
    *,
    rank: int,
    backend: str = "auto",
    expand: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """W = Φ_s (Φ_sᵀΦ_s + λI)⁻¹ Φ_wᵀ V in float64, Φ_s in row chunks (never all stored).

    Args:
        feature_map: featurised points (n, D) → features (n, r), float64.
        fs, fw: featurised sleep (M, D) and wake (N, D) points.
        v: wake weights (N, P); None for the identity (W = (K + λI)⁻¹ K_sw, P = N).
        lam: ridge λ ≥ 0.
        rank: r, the number of features (sets the chunk size).
        expand: y (r, P) ↦ Φ_s y without a second pass over the features (Nyström:
            k(X_s, Z)·(T y) by one fused ``gram_matmul``); default: recompute Φ_s by chunks.

    Returns:
        W (M, P).
    """
    chunks = list(row_chunks(fs.shape[0], rank))
    rhs = feature_map(fw).mT  # (r, N)
    if v is not None:
        rhs = rhs @ v  # (r, P)
    gram = torch.zeros(rhs.shape[0], rhs.shape[0], dtype=KRR_DTYPE, device=fs.device)
    cached = None
    for sl in chunks:
        phi = feature_map(fs[sl])
        gram.addmm_(phi.mT, phi)
        if len(chunks) == 1:
            cached = phi
    y = ridge_solve(gram, rhs, lam, backend=backend)
    if expand is not None:
        return expand(y)
    if cached is not None:
        return cached @ y
    return torch.cat([feature_map(fs[sl]) @ y for sl in chunks])


def _chunk_moments(feature_map: FeatureMap, f: torch.Tensor, t: torch.Tensor):
    phi = feature_map(f)
    return phi.mT @ phi, phi.mT @ t


def feature_ridge_predict(
    feature_map: FeatureMap,
    phi_fit: torch.Tensor,
    phi_query: torch.Tensor,
    targets: torch.Tensor,
    lam: torch.Tensor,
    *,
    rank: int,
    backend: str = "auto",
) -> torch.Tensor:
    """Differentiable primal KRR prediction φ(x_q)ᵀ (ΦᵀΦ + λI)⁻¹ Φᵀ T at query points.

    Gradients flow to whatever ``feature_map`` depends on (lengthscale, feature network,
    inducing points) and to ``lam``. With more than one chunk of fit points, each chunk's
    Φᵀ Φ and Φᵀ T run under activation checkpointing, so memory stays O(r² + chunk·r)
    (the chunk's features are recomputed in the backward pass). With fewer query points than
    target columns the r×r system is solved against φ(x_q)ᵀ instead of ΦᵀT
    (:func:`solve_against_gram`).
    """
    chunks = list(row_chunks(phi_fit.shape[0], rank))
    gram = rhs = None
    for sl in chunks:
        if len(chunks) == 1 or not torch.is_grad_enabled():
            g, r = _chunk_moments(feature_map, phi_fit[sl], targets[sl])
        else:
            g, r = checkpoint(
                _chunk_moments, feature_map, phi_fit[sl], targets[sl], use_reentrant=False
            )
        gram = g if gram is None else gram + g
        rhs = r if rhs is None else rhs + r
    phi_q = feature_map(phi_query)
    if solve_against_gram(rhs.shape[1], phi_q.shape[0]):
        return ridge_solve(gram, phi_q.mT, lam, backend=backend).mT @ rhs
    return phi_q @ ridge_solve(gram, rhs, lam, backend=backend)


def check_finite_weights(w: torch.Tensor, solver: str) -> torch.Tensor:
    if not bool(torch.isfinite(w).all()):
        raise FloatingPointError(
            f"solver={solver!r}: the KRR weights are not finite (try a larger lam)"
        )
    return w


def sqrt2_over(n: int) -> float:
    return math.sqrt(2.0 / n)
