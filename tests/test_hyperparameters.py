"""The data-driven choice of λ (and ℓ), and the range a learned λ is kept in."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import fastamort
from fastamort.hyperparameters import LEARNED_LAMBDA_RANGE, LambdaBoundWarning
from fastamort.models import FactorAnalysis


def _learner(lam, kernel_lr):
    torch.manual_seed(0)
    model = FactorAnalysis(3, 1).double()
    return fastamort.AmortisedLearner(
        model, n_sleep=100, n_held_out=30, lam=lam, kernel_lr=kernel_lr
    ), model.sample(100)[1]


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_the_learned_lambda_stays_in_its_range_and_says_when_it_hits_a_bound(side):
    lo, hi = LEARNED_LAMBDA_RANGE
    start = lo * 1.01 if side == "lower" else hi / 1.01
    learner, data = _learner(start, kernel_lr=1.0)
    # push log λ out of the range through the kernel optimiser's gradient
    sign = 1.0 if side == "lower" else -1.0
    learner.log_lam.register_hook(lambda g: torch.full_like(g, sign))
    with pytest.warns(LambdaBoundWarning, match=f"step 1: the learned λ reached the {side} bound"):
        record = learner.step(data[:50])
    assert record["lam_at_bound"] == side
    assert learner.lam == pytest.approx(lo if side == "lower" else hi, rel=1e-12)
    assert record["lam"] == pytest.approx(learner.lam)


def test_a_learned_lambda_inside_the_range_is_left_alone():
    learner, data = _learner(0.1, kernel_lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LambdaBoundWarning)
        record = learner.step(data[:50])
    assert "lam_at_bound" not in record
    assert math.log(LEARNED_LAMBDA_RANGE[0]) < float(learner.log_lam.detach()) < math.log(0.2)


@pytest.mark.parametrize("lam", [0.0, LEARNED_LAMBDA_RANGE[0] / 2, LEARNED_LAMBDA_RANGE[1] * 2])
def test_an_initial_lambda_outside_the_range_is_an_error(lam):
    with pytest.raises(ValueError, match=r"lam: must be > 0 and within LEARNED_LAMBDA_RANGE"):
        fastamort.AmortisedLearner(FactorAnalysis(3, 1), lam=lam)
