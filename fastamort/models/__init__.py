"""Generative models for the amortised learner: the protocol and ready-made models.

The models of the paper's experiments (``fastamort experiment <name>``) are here too, so that
users can start from them: :class:`MLPGenerator` (images), :class:`CircleGenerator` (circle),
:class:`LatentOscillator` and :class:`HodgkinHuxley` (dynamics), :class:`BernoulliNMF` (nmf),
:class:`HierarchicalMixture` (hierarchical), :class:`LaplaceICA` (ica), :class:`NeuralProcess`
and its per-task :class:`ConditionalNP` (neural-process).
"""

from .base import (
    ExpFamModel,
    GaussianObservationModel,
    GenerativeModel,
    check_model,
    is_expfam,
)
from .circle import CircleModel
from .circle_image import CircleGenerator
from .dynamics import HodgkinHuxley, LatentOscillator
from .factor_analysis import FactorAnalysis
from .hierarchical import HierarchicalMixture
from .ica import LaplaceICA
from .image_generator import MLPGenerator
from .mixture import GaussianMixture
from .neural_process import ConditionalNP, NeuralProcess
from .nmf import BernoulliNMF

__all__ = [
    "BernoulliNMF",
    "CircleGenerator",
    "CircleModel",
    "ConditionalNP",
    "ExpFamModel",
    "FactorAnalysis",
    "GaussianMixture",
    "GaussianObservationModel",
    "GenerativeModel",
    "HierarchicalMixture",
    "HodgkinHuxley",
    "LaplaceICA",
    "LatentOscillator",
    "MLPGenerator",
    "NeuralProcess",
    "check_model",
    "is_expfam",
]
