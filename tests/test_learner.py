"""AmortisedLearner: learning against the exact MLE, circle latents, checkpoints, failures."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import fastamort
from fastamort import AmortisedLearner, NonFiniteError
from fastamort.models import CircleModel, FactorAnalysis


def _fa_data(seed=0, n=500):
    torch.manual_seed(seed)
    truth = FactorAnalysis(5, 2).double()
    with torch.no_grad():
        truth.bias.copy_(torch.randn(5))
        truth.likelihood.log_std.copy_(torch.log(0.3 + torch.rand(5)))
    return truth.sample(n)[1]


def _mle_log_likelihood(init, x, steps=3000):
    mle = copy.deepcopy(init)
    opt = torch.optim.Adam(mle.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        (-mle.exact_log_likelihood(x)).backward()
        opt.step()
    return float(mle.exact_log_likelihood(x).detach())


@pytest.mark.slow
def test_factor_analysis_learning_closes_95_percent_of_the_gap():
    x = _fa_data()
    torch.manual_seed(1)
    model = FactorAnalysis(5, 2, weight_scale=0.5).double()
    ll0 = float(model.exact_log_likelihood(x).detach())
    ll_mle = _mle_log_likelihood(model, x)
    learner = AmortisedLearner(model, n_sleep=1000, n_held_out=200, lr=0.05, kernel_lr=0.02)
    learner.fit(x, epochs=20, batch_size=100, progress=False)  # 100 steps
    closed = (float(model.exact_log_likelihood(x)) - ll0) / (ll_mle - ll0)
    assert closed >= 0.95, f"closed {closed:.3f} of the gap ({ll0:.3f} -> MLE {ll_mle:.3f})"


@pytest.mark.slow
def test_circle_latent_recovers_the_generating_parameters():
    torch.manual_seed(0)
    truth = CircleModel(4, init_std=0.2, weight_scale=2.0).double()
    with torch.no_grad():
        truth.bias.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0]))
    x = truth.sample(1000)[1]
    torch.manual_seed(1)
    model = CircleModel(4, init_std=1.0).double()
    learner = AmortisedLearner(model, n_sleep=1000, lr=0.05, kernel_lr=0.02)
    learner.fit(x, epochs=20, batch_size=100, progress=False)  # 200 steps
    # the circle is identified up to rotation and reflection: compare W Wᵀ
    wwt, wwt_true = model.weight @ model.weight.T, truth.weight @ truth.weight.T
    assert float((wwt - wwt_true).norm() / wwt_true.norm()) < 0.1
    assert float((model.bias - truth.bias).norm()) < 0.15
    assert abs(float(model.likelihood.log_std.exp()) - 0.2) < 0.05


def _learner(seed=0):
    torch.manual_seed(seed)
    model = FactorAnalysis(3, 1).double()
    return AmortisedLearner(model, n_sleep=200, n_held_out=50, lr=0.02, seed=3)


def test_resume_continues_bit_exactly(tmp_path):
    data = _fa_data(n=60)[:, :3].contiguous()
    straight = _learner()
    torch.manual_seed(11)
    straight.fit(data, epochs=2, batch_size=20, progress=False)  # 6 steps

    first = _learner()
    torch.manual_seed(11)
    first.fit(data, epochs=1, batch_size=20, progress=False, checkpoint=tmp_path / "ck.pt")
    assert first.step_count == 3
    torch.manual_seed(999)  # the checkpoint, not this, decides what happens next
    resumed = _learner(seed=5)  # different initial parameters: overwritten by the checkpoint
    resumed.fit(
        data, epochs=2, batch_size=20, progress=False, checkpoint=tmp_path / "ck.pt", resume=True
    )
    assert resumed.step_count == 6
    for (name, a), (_, b) in zip(
        straight.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    assert torch.equal(straight.kernel.log_lengthscale, resumed.kernel.log_lengthscale)
    assert [r["objective"] for r in straight.history] == [r["objective"] for r in resumed.history]


def test_bad_checkpoint_paths_fail_before_training_and_bad_files_are_named(tmp_path):
    data = _fa_data(n=40)[:, :3].contiguous()
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a checkpoint")
    for path in (tmp_path, blocker / "ck.pt"):  # a folder; a folder that cannot exist
        learner = _learner()
        with pytest.raises(ValueError, match="checkpoint: "):
            learner.fit(data, epochs=1, batch_size=20, progress=False, checkpoint=path)
        assert learner.step_count == 0  # refused before any work
    with pytest.raises(TypeError, match="checkpoint: expected a file path"):
        _learner().fit(data, epochs=1, batch_size=20, progress=False, checkpoint=5)
    with pytest.raises(ValueError, match=r"checkpoint: cannot read .*a-file"):
        _learner().fit(data, batch_size=20, progress=False, checkpoint=blocker, resume=True)
    assert blocker.read_bytes() == b"not a checkpoint"  # left as it was
    other = tmp_path / "other.pt"
    torch.manual_seed(0)
    wider = AmortisedLearner(FactorAnalysis(4, 2).double(), n_sleep=200, n_held_out=50)
    wider.fit(torch.randn(40, 4, dtype=torch.float64), batch_size=20, progress=False,
              checkpoint=other)  # fmt: skip
    with pytest.raises(ValueError, match=r"checkpoint: .*other\.pt.* does not fit this learner"):
        _learner().fit(data, batch_size=20, progress=False, checkpoint=other, resume=True)


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("nan"))


class _Poisoned(FactorAnalysis):
    poisoned = False

    def natural_params(self, z):
        w = _NaNGrad.apply(self.weight) if self.poisoned else self.weight
        return self.likelihood.natural_params(z @ w.T + self.bias)


def test_non_finite_gradient_stops_naming_step_and_parameter(tmp_path):
    torch.manual_seed(0)
    model = _Poisoned(3, 1).double()
    data = model.sample(40)[1]
    learner = AmortisedLearner(model, n_sleep=100, n_held_out=20, learn_kernel=False)
    ck = tmp_path / "ck.pt"

    def poison(lrn, record):
        if record["step"] == 2:
            lrn.model.poisoned = True

    with pytest.raises(NonFiniteError, match=r"step 3: the gradient of parameter 'weight'"):
        learner.fit(
            data,
            epochs=3,
            batch_size=20,
            checkpoint=ck,
            checkpoint_every=1,
            progress=False,
            callbacks=[poison],
        )
    state = torch.load(ck, weights_only=True)["state"]
    assert state["step"] == 2, "the last good checkpoint stays intact"
    assert torch.equal(
        state["model"]["weight"], model.weight.detach()
    )  # failed step changed nothing
    assert torch.isfinite(model.weight).all()


def test_progress_bar_and_history(capsys):
    torch.manual_seed(0)
    model = FactorAnalysis(3, 1).double()
    data = model.sample(40)[1]
    history = AmortisedLearner(model, n_sleep=100, n_held_out=20).fit(
        data, epochs=1, batch_size=20, progress=True
    )
    assert [r["step"] for r in history] == [1, 2]
    assert {"objective", "kernel_loss", "lengthscale", "lam", "seconds"} <= set(history[0])
    assert "amortised learning" in capsys.readouterr().err


def test_callback_can_stop_early():
    torch.manual_seed(0)
    model = FactorAnalysis(3, 1).double()
    data = model.sample(40)[1]
    learner = AmortisedLearner(model, n_sleep=100, n_held_out=20)
    history = learner.fit(
        data, epochs=5, batch_size=20, progress=False, callbacks=[lambda lrn, r: r["step"] >= 3]
    )
    assert len(history) == 3


def test_float32_model_trains():
    torch.manual_seed(0)
    model = FactorAnalysis(3, 1)
    data = model.sample(40)[1]
    AmortisedLearner(model, n_sleep=100, n_held_out=20).fit(
        data, epochs=1, batch_size=20, progress=False
    )
    assert torch.isfinite(model.weight).all()


@pytest.mark.parametrize(
    ("kwargs", "fit_kwargs", "data", "match"),
    [
        ({"n_sleep": 1}, {}, None, "n_sleep"),
        ({"lam": -1.0}, {}, None, "lam"),
        ({}, {"batch_size": 0}, None, "batch_size"),
        ({}, {"resume": True}, None, "checkpoint"),
        ({}, {}, torch.full((10, 3), float("nan"), dtype=torch.float64), "data: contains NaN"),
        ({}, {}, torch.zeros(0, 3, dtype=torch.float64), "data: empty"),
        ({}, {}, torch.randn(10, 4, dtype=torch.float64), "data: observations of shape"),
        ({"max_grad_norm": -1.0}, {}, None, "max_grad_norm: expected a positive finite"),
        ({"max_grad_norm": 0.0}, {}, None, "max_grad_norm: expected a positive finite"),
        ({"max_grad_norm": math.nan}, {}, None, "max_grad_norm: expected a positive finite"),
        ({"max_grad_norm": "1"}, {}, None, "max_grad_norm: expected a number"),
        ({}, {"checkpoint_every": 0}, None, "checkpoint_every"),
        ({}, {"epochs": math.inf}, None, "epochs: expected an integer"),
        ({}, {"epochs": math.nan}, None, "epochs: expected an integer"),
        ({}, {"epochs": 1.5}, None, "epochs: expected an integer"),
        ({}, {"epochs": -1}, None, "epochs: expected an integer >= 0"),
        ({}, {"batch_size": 5.0}, None, "batch_size: expected an integer"),
        ({"n_sleep": 100.0}, {}, None, "n_sleep: expected an integer"),
        ({"n_sleep": None}, {}, None, "n_sleep: expected an integer"),
        ({"n_held_out": 0}, {}, None, "n_held_out"),
        ({"kernel": "gaussian"}, {}, None, "kernel: expected a fastamort.kernels.Kernel"),
        ({"optimizer": "adam"}, {}, None, "optimizer: expected a torch.optim.Optimizer"),
        ({"kernel_optimizer": "adam"}, {}, None, "kernel_optimizer: expected a torch.optim"),
        ({"seed": None}, {}, None, "seed: expected an integer"),
        ({"seed": 2.5}, {}, None, "seed: expected an integer"),
        ({"seed": -1}, {}, None, "seed: expected an integer >= 0"),
        ({"lam": "0.1"}, {}, None, "lam: expected a number"),
        ({"lam": torch.tensor([0.1, 0.2])}, {}, None, "lam: expected a number or a one-element"),
        ({"lam": 0.0}, {}, None, "lam: must be > 0"),
    ],
)
def test_bad_input(kwargs, fit_kwargs, data, match):
    model = FactorAnalysis(3, 1).double()
    with pytest.raises((ValueError, TypeError), match=match):
        learner = AmortisedLearner(model, **{"n_sleep": 50, "n_held_out": 10, **kwargs})
        x = torch.randn(10, 3, dtype=torch.float64) if data is None else data
        learner.fit(x, **{"epochs": 1, "batch_size": 5, "progress": False, **fit_kwargs})


def test_numpy_scalars_are_accepted():
    torch.manual_seed(0)
    model = FactorAnalysis(3, 1).double()
    data = model.sample(40)[1]
    learner = AmortisedLearner(
        model,
        n_sleep=np.int64(100),
        n_held_out=np.int32(20),
        lam=np.float64(0.1),
        seed=np.int64(3),
        max_grad_norm=np.float32(1.0),
    )
    history = learner.fit(
        data,
        epochs=np.int64(1),
        batch_size=np.int64(20),
        checkpoint_every=np.int16(1),
        progress=False,
    )
    assert len(history) == 2 and learner.n_sleep == 100 and type(learner.seed) is int


def test_a_single_held_out_sample_is_enough():
    torch.manual_seed(0)
    model = FactorAnalysis(3, 1).double()
    history = AmortisedLearner(model, n_sleep=50, n_held_out=1).fit(
        model.sample(20)[1], epochs=1, batch_size=10, progress=False
    )
    assert len(history) == 2 and all(math.isfinite(r["kernel_loss"]) for r in history)


def test_wrong_data_shape_is_reported_before_any_training_step():
    torch.manual_seed(0)
    learner = AmortisedLearner(FactorAnalysis(3, 1).double(), n_sleep=50, n_held_out=10)
    with pytest.raises(ValueError, match=r"data: observations of shape \(4,\) do not match"):
        learner.fit(torch.randn(10, 4, dtype=torch.float64), epochs=1, batch_size=5)
    assert learner.step_count == 0 and not learner.initialised


def test_kernel_loss_names_its_arguments():
    torch.manual_seed(0)
    model = FactorAnalysis(4, 2).double()
    kernel = fastamort.kernels.Gaussian(1.0)
    fit, held = model.sample(30), model.sample(10)
    nan_x = torch.full((10, 4), math.nan, dtype=torch.float64)
    cases = [
        (fit, (held[0], held[1][:, :3]), 0.1, "held_out: observations of shape"),
        (fit, (held[0], nan_x), 0.1, "held_out: x contains NaN"),
        ((fit[0], nan_x.repeat(3, 1)), held, 0.1, "sleep: x contains NaN"),
        (fit, (held[0][:0], held[1][:0]), 0.1, "held_out: x must be a tensor of shape"),
        (fit, (held[0][:5], held[1]), 0.1, "held_out: z must have one row per sample"),
        (fit, held, torch.tensor([0.1, 0.2]), "lam: expected a number or a one-element"),
        (fit, held, "0.1", "lam: expected a number"),
        (fit, held, -0.1, "lam: must be finite and >= 0"),
    ]
    for sleep, held_out, lam, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            fastamort.kernel_loss(model, kernel, sleep, held_out, lam)
    with pytest.raises(TypeError, match=r"kernel: expected a fastamort\.kernels\.Kernel"):
        fastamort.kernel_loss(model, "gaussian", fit, held, 0.1)
    one = fastamort.kernel_loss(model, kernel, fit, held, torch.tensor([0.1], dtype=torch.float64))
    assert one.shape == () and torch.isfinite(one)


def test_kernel_learning_lowers_the_held_out_error():
    torch.manual_seed(0)
    model = FactorAnalysis(4, 2).double()
    kernel = fastamort.kernels.Gaussian(0.3)  # far too rough
    fit, held = model.sample(400), model.sample(200)
    lam = torch.tensor(0.1, dtype=torch.float64)
    before = float(fastamort.kernel_loss(model, kernel, fit, held, lam))
    opt = torch.optim.Adam(kernel.parameters(), lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        fastamort.kernel_loss(model, kernel, model.sample(400), model.sample(200), lam).backward()
        opt.step()
    after = float(fastamort.kernel_loss(model, kernel, fit, held, lam))
    assert after < 0.5 * before


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_learner_runs_on_cuda(dtype):
    torch.manual_seed(0)
    model = FactorAnalysis(4, 2).to("cuda", dtype)
    data = model.sample(100)[1]
    with fastamort.record_backends() as ran:
        history = AmortisedLearner(model, n_sleep=300, n_held_out=50).fit(
            data, epochs=1, batch_size=50, progress=False
        )
    assert len(history) == 2 and all(r["objective"] == r["objective"] for r in history)
    assert ("gram", "triton") in ran and ("ridge_solve", "triton") in ran
    assert model.weight.device.type == "cuda"


def test_learner_settings_live_in_one_frozen_config():
    model = FactorAnalysis(4, 2)
    learner = AmortisedLearner(
        model, n_sleep=100, n_held_out=20, lam=0.5, solver=fastamort.SolverConfig("cg", tol=1e-4)
    )
    config = learner.config
    assert isinstance(config, fastamort.LearnerConfig)
    assert (config.n_sleep, config.n_held_out, config.lam, config.lam_rule) == (100, 20, 0.5, None)
    assert learner.n_sleep == 100 and learner.solver is config.solver and not learner.warm_start
    assert learner.hyperparameters() == config.hyperparameters("expfam")
    with pytest.raises(AttributeError):
        config.n_sleep = 10  # frozen
    with pytest.raises(AttributeError):
        learner.n_sleep = 10  # read from the config
    assert config.replace(sleep_refresh=0.5).uses_warm_start  # cg, aligned sleep sets
    assert fastamort.LearnerConfig().lam_rule == "loo"
    with pytest.raises(ValueError, match="n_sleep: expected an integer >= 2"):
        config.replace(n_sleep=1)
    with pytest.raises(TypeError, match=r"solver: expected a fastamort\.solvers\.SolverConfig"):
        fastamort.LearnerConfig(solver="exact")
