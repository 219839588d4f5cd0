"""Baselines for amortised learning: VAE, IWAE and reweighted wake-sleep (RWS).

They share the generative models of amortised learning: every loss needs only the model's
``log_joint(z, x)`` (:mod:`fastamort.models.base`) and an amortised encoder q_φ(z|x)
(:mod:`fastamort.baselines.encoders`); the model's ``sample`` is used by RWS's optional
sleep-φ phase only. All estimates are per datum (importance weights are normalised over the
particles of each datum, never pooled over the batch).

Own code rather than Pyro: no extra dependency, per-datum RWS weights (Pyro's
``ReweightedWakeSleep`` pools the weights over a mini-batch), and the same model protocol as
:func:`fastamort.amortised_objective`, so the comparisons differ only in the learning rule.

=============  =========================================  ====================================
method         θ-gradient                                 φ-gradient
=============  =========================================  ====================================
VAE            ∇θ ELBO (reparameterised; exact sum for a  ∇φ ELBO (same)
               categorical encoder)
IWAE (k)       ∇θ IWAE-k bound = Σ w̃ ∇θ log p             reparameterised; VIMCO if discrete
RWS (k)        Σ w̃ ∇θ log p (same form as IWAE's)         wake-φ and/or sleep-φ
=============  =========================================  ====================================
"""

from .encoders import CategoricalEncoder, Encoder, GaussianEncoder, encoder_for
from .iwae import iwae_bound, iwae_loss
from .learner import METHODS, BaselineLearner, baseline_losses
from .rws import importance_weights, rws_losses
from .vae import elbo, vae_loss

__all__ = [
    "METHODS",
    "BaselineLearner",
    "CategoricalEncoder",
    "Encoder",
    "GaussianEncoder",
    "baseline_losses",
    "elbo",
    "encoder_for",
    "importance_weights",
    "iwae_bound",
    "iwae_loss",
    "rws_losses",
    "vae_loss",
]
