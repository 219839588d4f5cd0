"""State-space models: a noisy limit-cycle oscillator seen through images, and a stochastic
Hodgkin–Huxley neuron seen through a noisy, subsampled voltage trace.

Both are latent-variable models whose latent is a whole state trajectory, drawn by
simulating the model forward; ``log_joint`` sums the transition and emission log densities.
Both emissions are Gaussian, so the models provide the exponential-family methods (the
estimator then uses its lower-variance form). Positive parameters are stored as logs.

:class:`LatentOscillator` (after the authors' ``Dynamical_sinusoids.ipynb``)
    z_0 fixed; z_t = ρ(z_{t−1}) R(ω) z_{t−1} + σ_z ε_t, t = 1..T, with R(ω) the rotation by
    ω radians per step and ρ(z) = sigmoid(k (‖z‖ − c)) / ‖z‖ a radial squashing, so the
    noise-free dynamics rotate at ω per step on a limit cycle of radius r* = sigmoid(k (r* − c))
    (period 2π/ω steps). Frame t is a 1-D image of P pixels on a grid g over [−1.5, 1.5]: a
    Gaussian bump exp(−(g − z_{t,1})² / (2 w²)) at the first coordinate of the state, plus
    N(0, σ_x²) pixel noise. x has shape (n, T, P); z has shape (n, T, 2).

:class:`HodgkinHuxley` (after ``Dynamical_HH.ipynb``, Pospischil et al. 2008 kinetics)
    C dV/dt = I(t) − g_Na m³h (V − E_Na) − g_K n⁴ (V − E_K) − g_L (V − E_L), gates
    dq/dt = α_q(V)(1 − q) − β_q(V) q for q ∈ {m, h, n}. Euler–Maruyama in V with per-step
    noise N(0, σ_V²); the gates follow the exponential-Euler update (exact for V frozen over a
    step) and are deterministic given the voltage path. Learned: g_Na, g_K, g_L (as logs);
    C, reversal potentials, V_T, the input current and both noise levels are known. The
    observation is the voltage every ``subsample`` steps plus N(0, σ_obs²) noise, x (n, K).
    The latent z (n, T, 4) holds (V, m, h, n) at steps 1..T. The gates are a deterministic
    function of the voltage path that does not depend on the conductances, so ``log_prior``
    is the density of the voltage path alone, a product of Gaussian transitions in V (the
    gates enter it through the stored values; their point mass is constant in θ).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_int
from ..likelihoods import GaussianLikelihood, flat
from ._args import check_count, check_positive
from .base import GaussianObservationModel


def _gauss_logpdf(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------------------------------
class LatentOscillator(GaussianObservationModel):
    """A noisy 2-d limit-cycle oscillator emitting a 1-D bump image per step.

    Args:
        n_steps: T, the sequence length.
        n_pixels: P, pixels per frame (grid over [−1.5, 1.5]).
        omega: rotation per step in radians (period 2π/ω steps).
        gain, centre: k and c of the radial squashing sigmoid(k (‖z‖ − c)).
        state_std: σ_z, the transition noise.
        width: w, the bump width.
        obs_std: σ_x, the pixel noise.
        z0: the fixed initial state (2,).

    Shapes: z (n, T, 2) (a flat (n, 2T) is accepted), x (n, T, P).
    """

    def __init__(
        self,
        n_steps: int = 20,
        n_pixels: int = 20,
        *,
        omega: float = math.pi / 6,
        gain: float = 4.0,
        centre: float = 0.3,
        state_std: float = 0.1,
        width: float = 0.3,
        obs_std: float = 0.05,
        z0: tuple[float, float] = (0.8, 0.0),
    ):
        super().__init__()
        self.n_steps = check_count(n_steps, "n_steps")
        self.n_pixels = check_count(n_pixels, "n_pixels", 2)
        if not 0 < check_positive(omega, "omega") < math.pi:
            raise ValueError(f"omega: must lie in (0, π), got {omega}")
        if not isinstance(centre, (int, float)) or not math.isfinite(centre):
            raise ValueError(f"centre: must be a finite number, got {centre!r}")
        if len(z0) != 2:
            raise ValueError(f"z0: expected 2 numbers, got {len(z0)}")
        self.log_omega = nn.Parameter(torch.tensor(math.log(omega)))
        self.log_gain = nn.Parameter(torch.tensor(math.log(check_positive(gain, "gain"))))
        self.centre = nn.Parameter(torch.tensor(float(centre)))
        state_std = check_positive(state_std, "state_std")
        self.log_state_std = nn.Parameter(torch.tensor(math.log(state_std)))
        self.log_width = nn.Parameter(torch.tensor(math.log(check_positive(width, "width"))))
        self.likelihood = GaussianLikelihood(None, init_std=check_positive(obs_std, "obs_std"))
        self.register_buffer("z0", torch.tensor([float(v) for v in z0]))
        self.register_buffer("grid", torch.linspace(-1.5, 1.5, self.n_pixels))
        self.latent_dim = 2 * self.n_steps
        self.obs_dim = self.n_steps * self.n_pixels

    # --- quantities -----------------------------------------------------------------------
    @property
    def omega(self) -> torch.Tensor:
        return self.log_omega.exp()

    def period(self) -> float:
        """2π/ω, the period of the noise-free limit cycle in steps."""
        return float(2 * math.pi / self.omega.detach())

    def limit_radius(self, iters: int = 200) -> float:
        """r* = sigmoid(k (r* − c)), found by fixed-point iteration from r = 1."""
        with torch.no_grad():
            k, c, r = self.log_gain.exp(), self.centre, torch.ones_like(self.centre)
            for _ in range(iters):
                r = torch.sigmoid(k * (r - c))
        return float(r)

    def transition_mean(self, z: torch.Tensor) -> torch.Tensor:
        """f(z) = ρ(z) R(ω) z, for z (..., 2)."""
        w = self.omega
        c, s = torch.cos(w), torch.sin(w)
        rot = torch.stack([c * z[..., 0] - s * z[..., 1], s * z[..., 0] + c * z[..., 1]], -1)
        norm = z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        rho = torch.sigmoid(self.log_gain.exp() * (norm - self.centre)) / norm
        return rho * rot

    def frames(self, z: torch.Tensor) -> torch.Tensor:
        """Noise-free frames: bumps at z[..., 0] on the grid, (..., P)."""
        d = self.grid.to(z.dtype) - z[..., :1]
        return torch.exp(-0.5 * (d / self.log_width.exp()) ** 2)

    # --- protocol ---------------------------------------------------------------------------
    def _latent(self, z: torch.Tensor) -> torch.Tensor:
        return z.reshape(z.shape[0], self.n_steps, 2)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return flat(self.frames(self._latent(z)))

    def simulate(self, start: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Forward simulation of ``n_steps`` states from ``start`` (..., 2): (..., n_steps, 2)."""
        std = self.log_state_std.exp()
        states, prev = [], start
        for _ in range(n_steps):
            prev = self.transition_mean(prev) + std * torch.randn_like(prev)
            states.append(prev)
        return torch.stack(states, dim=-2)

    def sample_latent(self, n: int) -> torch.Tensor:
        start = self.z0.to(self.log_omega.dtype).expand(n, 2)
        return self.simulate(start, self.n_steps)

    @torch.no_grad()
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = check_int(n, "n", 0)
        z = self.sample_latent(n)
        x = self.likelihood.sample(self.frames(z))
        return z, x

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        z = self._latent(z)
        prev = torch.cat([self.z0.to(z.dtype).expand(z.shape[0], 1, 2), z[:, :-1]], dim=1)
        lp = _gauss_logpdf(z, self.transition_mean(prev), self.log_state_std.exp())
        return lp.sum((1, 2))

    def log_emission(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x_t | z_t) per step: z (..., 2), x (..., P) → (...)."""
        std = self.likelihood.log_std.exp()
        return _gauss_logpdf(x, self.frames(z), std).sum(-1)


# ------------------------------------------------------------------------------------------
def _efun(y: torch.Tensor) -> torch.Tensor:
    """y / (exp(y) − 1), continuous at y = 0 (value 1)."""
    small = y.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(y), y)
    return torch.where(small, 1.0 - 0.5 * y, safe / torch.expm1(safe))


class HodgkinHuxley(GaussianObservationModel):
    """A stochastic Hodgkin–Huxley neuron (Na, K, leak) with learned conductances.

    Args:
        current: the known input current I(t) per step (T,), µA/cm².
        g_na, g_k, g_l: initial maximal conductances (mS/cm²), learned as logs.
        dt: step in ms.
        subsample: observe every ``subsample``-th step (K = T // subsample observations).
        state_std: σ_V, the voltage noise per step (mV).
        obs_std: σ_obs, the observation noise (mV).
        v0: initial voltage (mV); the gates start at their steady state at v0.
        c_m, e_na, e_k, e_l, v_t: capacitance and fixed potentials (Pospischil et al. 2008).

    Shapes: z (n, T, 4) = (V, m, h, n) at steps 1..T; x (n, K).
    """

    def __init__(
        self,
        current: torch.Tensor,
        *,
        g_na: float = 50.0,
        g_k: float = 5.0,
        g_l: float = 0.1,
        dt: float = 0.05,
        subsample: int = 10,
        state_std: float = 0.5,
        obs_std: float = 1.0,
        v0: float = -70.0,
        c_m: float = 1.0,
        e_na: float = 50.0,
        e_k: float = -90.0,
        e_l: float = -70.42,
        v_t: float = -60.0,
    ):
        super().__init__()
        if not isinstance(current, torch.Tensor):
            raise TypeError(f"current: expected a torch.Tensor, got {type(current).__name__}")
        if current.ndim != 1 or current.shape[0] < 1:
            raise ValueError(f"current: expected shape (T,), got {tuple(current.shape)}")
        if not bool(torch.isfinite(current).all()):
            raise ValueError("current: contains NaN or infinite values")
        self.subsample = check_count(subsample, "subsample")
        if current.shape[0] < self.subsample:
            raise ValueError(f"subsample: {subsample} exceeds the trace length {current.shape[0]}")
        self.dt = check_positive(dt, "dt")
        self.state_std = check_positive(state_std, "state_std")
        self.obs_std = check_positive(obs_std, "obs_std")
        self.c_m = check_positive(c_m, "c_m")
        for name, v in (("v0", v0), ("e_na", e_na), ("e_k", e_k), ("e_l", e_l), ("v_t", v_t)):
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}: must be a finite number, got {v!r}")
        self.v0, self.e_na, self.e_k, self.e_l, self.v_t = map(float, (v0, e_na, e_k, e_l, v_t))
        self.log_g = nn.Parameter(
            torch.tensor([math.log(check_positive(g, n)) for n, g in
                          (("g_na", g_na), ("g_k", g_k), ("g_l", g_l))])
        )  # fmt: skip
        self.register_buffer("current", current.detach().clone().float())
        self.likelihood = GaussianLikelihood(None, init_std=self.obs_std)
        self.likelihood.log_std.requires_grad_(False)
        self.n_steps = current.shape[0]
        self.obs_dim = self.n_steps // self.subsample
        self.latent_dim = 4 * self.n_steps

    PARAMETER_NAMES = ("g_na", "g_k", "g_l")

    def conductances(self) -> torch.Tensor:
        """(g_Na, g_K, g_L), shape (3,)."""
        return self.log_g.exp()

    # --- kinetics -----------------------------------------------------------------------
    def rates(self, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(α_m, β_m, α_h, β_h, α_n, β_n) at voltage v (ms⁻¹)."""
        u = v - self.v_t
        a_m = 1.28 * _efun(-(u - 13.0) / 4.0)
        b_m = 1.4 * _efun((u - 40.0) / 5.0)
        a_h = 0.128 * torch.exp(-(u - 17.0) / 18.0)
        b_h = 4.0 / (1.0 + torch.exp(-(u - 40.0) / 5.0))
        a_n = 0.16 * _efun(-(u - 15.0) / 5.0)
        b_n = 0.5 * torch.exp(-(u - 10.0) / 40.0)
        return a_m, b_m, a_h, b_h, a_n, b_n

    def _gate_step(self, v: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        a_m, b_m, a_h, b_h, a_n, b_n = self.rates(v)
        a = torch.stack([a_m, a_h, a_n], -1)
        b = torch.stack([b_m, b_h, b_n], -1)
        inf, tau_inv = a / (a + b), a + b
        return inf + (gates - inf) * torch.exp(-self.dt * tau_inv)

    def drift(self, v: torch.Tensor, gates: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """dV/dt at (V, m, h, n) and the input current (differentiable in the conductances)."""
        g = self.conductances().to(v.dtype)
        m, h, n = gates[..., 0], gates[..., 1], gates[..., 2]
        i_ion = (
            g[0] * m**3 * h * (v - self.e_na) + g[1] * n**4 * (v - self.e_k) + g[2] * (v - self.e_l)
        )
        return (current - i_ion) / self.c_m

    def initial_state(self, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        v = torch.full((n,), self.v0, dtype=dtype, device=self.log_g.device)
        a_m, b_m, a_h, b_h, a_n, b_n = self.rates(v)
        gates = torch.stack([a_m / (a_m + b_m), a_h / (a_h + b_h), a_n / (a_n + b_n)], -1)
        return v, gates

    # --- protocol ---------------------------------------------------------------------------
    def sample_latent(self, n: int) -> torch.Tensor:
        dtype = self.log_g.dtype
        v, gates = self.initial_state(n, dtype)
        current = self.current.to(dtype)
        out = torch.empty(n, self.n_steps, 4, dtype=dtype, device=v.device)
        for t in range(self.n_steps):
            new_v = v + self.dt * self.drift(v, gates, current[t])
            new_v = new_v + self.state_std * torch.randn_like(v)
            gates = self._gate_step(v, gates)
            v = new_v
            out[:, t, 0], out[:, t, 1:] = v, gates
        return out

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        z = z.reshape(z.shape[0], self.n_steps, 4)
        k = self.subsample
        return z[:, k - 1 : self.obs_dim * k : k, 0]

    @torch.no_grad()
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = check_int(n, "n", 0)
        z = self.sample_latent(n)
        return z, self.likelihood.sample(self.mean(z))

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        z = z.reshape(z.shape[0], self.n_steps, 4)
        v0, g0 = self.initial_state(z.shape[0], z.dtype)
        prev_v = torch.cat([v0[:, None], z[:, :-1, 0]], 1)
        prev_g = torch.cat([g0[:, None], z[:, :-1, 1:]], 1)
        mean = prev_v + self.dt * self.drift(prev_v, prev_g, self.current.to(z.dtype))
        std = torch.tensor(self.state_std, dtype=z.dtype, device=z.device)
        return _gauss_logpdf(z[..., 0], mean, std).sum(-1)
