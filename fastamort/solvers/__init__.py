"""Solvers for the estimator's kernel ridge regression W = (K + λI)⁻¹ K_sw V.

One module per solver, all taking featurised sleep points ``fs`` (M, D), wake points ``fw``
(N, D), wake weights ``V`` (N, P) and λ, and returning float64 weights W (M, P) and an info
dict:

==========  =====================================================  ===============  ===========
solver      method                                                 time             memory
==========  =====================================================  ===============  ===========
exact       Cholesky of K + λI (:mod:`.exact`)                     O(M³)            O(M²)
nystrom     m inducing points, primal ridge (:mod:`.nystrom`)      O(M m²)          O(m² + Mm/c)
rff         D random Fourier features, primal ridge (:mod:`.rff`)  O(M D²)          O(D² + MD/c)
cg          preconditioned block CG, fused K products, warm start  O(M² D · iters)  O(M (P + r))
            (:mod:`.cg`)
==========  =====================================================  ===============  ===========

(c: the number of row chunks; feature matrices are produced and consumed chunk by chunk.)
Select one with ``solver=`` in :func:`fastamort.amortised_objective`, :func:`fastamort.kernel_loss`
and :class:`fastamort.AmortisedLearner`; :class:`SolverConfig` checks the options.
"""

from __future__ import annotations

import torch

from ..kernels import Kernel
from ._common import (
    DEFAULT_MAX_ITER,
    DEFAULT_N_FEATURES,
    DEFAULT_N_INDUCING,
    DEFAULT_TOL,
    INDUCING_RULES,
    SOLVERS,
    SolverConfig,
    feature_ridge_predict,
    feature_ridge_weights,
    solve_against_gram,
    solver_config,
)
from .cg import CGResult, WarmStart, block_pcg, cg_weights
from .exact import exact_weights, krr_dtype
from .nystrom import nystrom_feature_map, nystrom_weights, pivoted_cholesky
from .rff import RFF_KERNELS, RandomFourierFeatures, rff_weights

__all__ = [
    "DEFAULT_MAX_ITER",
    "DEFAULT_N_FEATURES",
    "DEFAULT_N_INDUCING",
    "DEFAULT_TOL",
    "INDUCING_RULES",
    "RFF_KERNELS",
    "SOLVERS",
    "CGResult",
    "RandomFourierFeatures",
    "SolverConfig",
    "WarmStart",
    "block_pcg",
    "cg_weights",
    "exact_weights",
    "feature_ridge_predict",
    "feature_ridge_weights",
    "krr_dtype",
    "krr_weights",
    "nystrom_feature_map",
    "nystrom_weights",
    "pivoted_cholesky",
    "rff_weights",
    "solve_against_gram",
    "solver_config",
]


@torch.no_grad()
def krr_weights(
    config: SolverConfig,
    kernel: Kernel,
    fs: torch.Tensor,
    fw: torch.Tensor,
    v: torch.Tensor,
    lam: float,
    *,
    warm_start: WarmStart | None = None,
) -> tuple[torch.Tensor, dict]:
    """W (M, P) ≈ (K + λI)⁻¹ k(fs, fw) V by ``config.solver``; info dict with ``solver`` and
    ``contracted``.

    With fewer wake points N than columns P in V (and no CG warm start, whose previous
    solution has P columns), the solver runs against the cross Gram itself and W is
    ((K + λI)⁻¹ K_sw) V: N right-hand sides instead of P (:func:`solve_against_gram`).
    """
    if warm_start is not None and config.solver != "cg":
        raise ValueError(f"warm_start: only used by solver='cg', not {config.solver!r}")
    contract = warm_start is None and solve_against_gram(v.shape[1], fw.shape[0])
    w, info = _solver_weights(config, kernel, fs, fw, None if contract else v, lam, warm_start)
    if contract:
        w = w @ v
    return w, {"solver": config.solver, "contracted": contract, **info}


def _solver_weights(
    config: SolverConfig,
    kernel: Kernel,
    fs: torch.Tensor,
    fw: torch.Tensor,
    v: torch.Tensor | None,
    lam: float,
    warm_start: WarmStart | None,
) -> tuple[torch.Tensor, dict]:
    m = fs.shape[0]
    if config.solver == "exact":
        w, info = exact_weights(kernel, fs, fw, v, lam)
    elif config.solver == "nystrom":
        w, info = nystrom_weights(
            kernel, fs, fw, v, lam, n_inducing=min(config.rank, m), inducing=config.inducing
        )
    elif config.solver == "rff":
        w, info = rff_weights(kernel, fs, fw, v, lam, n_features=config.features)
    else:
        w, info = cg_weights(
            kernel,
            fs,
            fw,
            v,
            lam,
            tol=config.rtol,
            n_inducing=min(config.rank, m),
            inducing=config.inducing,
            max_iter=config.iterations,
            warm_start=warm_start,
        )
    return w, info
