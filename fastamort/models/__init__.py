"""Generative models for the amortised learner: the protocol and ready-made models."""

from .base import (
    ExpFamModel,
    GaussianObservationModel,
    GenerativeModel,
    check_model,
    is_expfam,
)
from .circle import CircleModel
from .factor_analysis import FactorAnalysis
from .mixture import GaussianMixture

__all__ = [
    "CircleModel",
    "ExpFamModel",
    "FactorAnalysis",
    "GaussianMixture",
    "GaussianObservationModel",
    "GenerativeModel",
    "check_model",
    "is_expfam",
]
