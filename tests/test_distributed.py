"""Data-parallel learning on torch.distributed: 2 gloo processes over loopback."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
from torch import distributed as dist
from torch import multiprocessing as mp

import fastamort
from fastamort.distributed import resolve_distributed, shard_order, sleep_seed
from fastamort.learner import _epoch_order
from fastamort.models import FactorAnalysis

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")

N_SLEEP, BATCH, SEED, LAM = 300, 40, 3, 1e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data() -> torch.Tensor:
    torch.manual_seed(0)
    return FactorAnalysis(4, 2).double().sample(200)[1]


def _learner(*, sgd: bool = False, learn_kernel: bool = True) -> fastamort.AmortisedLearner:
    torch.manual_seed(1)
    model = FactorAnalysis(4, 2).double()
    kernel = fastamort.kernels.Gaussian().double()
    kernel.init_from(_data())
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0) if sgd else None
    return fastamort.AmortisedLearner(
        model,
        kernel=kernel,
        n_sleep=N_SLEEP,
        n_held_out=50,
        lam=LAM,
        lr=0.02,
        optimizer=optimizer,
        learn_kernel=learn_kernel,
        seed=SEED,
    )


def _worker(rank: int, world: int, port: int, out: str, task: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        if task == "one_sgd_step":
            learner = _learner(sgd=True, learn_kernel=False)
            learner.fit(
                _data(),
                epochs=1,
                batch_size=BATCH,
                progress=False,
                callbacks=[lambda *_: True],  # stop after one step
            )
        elif task == "pool":
            learner = _learner()
            learner.fit(_data(), epochs=1, batch_size=BATCH, progress=False, pool_sleep=True)
        else:  # "checkpoint"
            learner = _learner()
            learner.fit(
                _data(),
                epochs=1,
                batch_size=BATCH,
                progress=False,
                checkpoint=Path(out) / "ckpt.pt",
            )
        state = {
            "model": {k: v.clone() for k, v in learner.model.state_dict().items()},
            "kernel": {k: v.clone() for k, v in learner.kernel.state_dict().items()},
            "log_lam": learner.log_lam.detach().clone(),
            "steps": learner.step_count,
            "history": learner.history,
        }
        torch.save(state, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, task: str, world: int = 2) -> list[dict]:
    mp.start_processes(
        _worker,
        args=(world, _free_port(), str(tmp_path), task),
        nprocs=world,
        start_method="spawn",
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _assert_same_state(a: dict, b: dict) -> None:
    for part in ("model", "kernel"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs across ranks"
    assert torch.equal(a["log_lam"], b["log_lam"])


def test_shard_order_splits_an_epoch_evenly():
    order = torch.randperm(11)
    shards = [shard_order(order, r, 3) for r in range(3)]
    assert [s.numel() for s in shards] == [4, 4, 4]
    covered = torch.cat(shards)
    assert set(covered.tolist()) == set(range(11))  # every point seen, one padded repeat
    assert covered.numel() - 11 == 1


def test_single_process_is_not_distributed():
    assert resolve_distributed("auto", torch.device("cpu")) is None
    assert resolve_distributed(False, torch.device("cpu")) is None
    with pytest.raises(RuntimeError, match="distributed=True"):
        resolve_distributed(True, torch.device("cpu"))
    with pytest.raises(ValueError, match="distributed"):
        resolve_distributed("yes", torch.device("cpu"))


@pytest.mark.slow
def test_two_rank_gradient_is_the_mean_of_the_single_process_estimates(tmp_path):
    states = _run(tmp_path, "one_sgd_step")
    _assert_same_state(*states)
    assert states[0]["steps"] == 1
    # The same step, one rank at a time in this process, with the same seeds and shards.
    data = _data()
    order = _epoch_order(data.shape[0], SEED, 0)
    grads = []
    for rank in range(2):
        learner = _learner(learn_kernel=False)
        learner.initialise()
        model = learner.model
        batch = data[shard_order(order, rank, 2)[:BATCH]]
        torch.manual_seed(sleep_seed(SEED, rank, 1))
        objective = fastamort.amortised_objective(
            model, batch, n_sleep=N_SLEEP, kernel=learner.kernel, lam=LAM
        )
        model.zero_grad()
        (-objective).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    start = dict(_learner().model.named_parameters())
    for k, p0 in start.items():
        expected = p0.detach() - 0.5 * (grads[0][k] + grads[1][k])  # SGD, lr = 1
        torch.testing.assert_close(states[0]["model"][k], expected, rtol=1e-9, atol=1e-10)
    # and not the single-rank estimate: the ranks' estimates really differ
    assert not torch.allclose(grads[0]["weight"], grads[1]["weight"])


@pytest.mark.slow
def test_pooled_sleep_keeps_ranks_identical(tmp_path):
    states = _run(tmp_path, "pool")
    _assert_same_state(*states)
    assert states[0]["steps"] == 3  # ceil(ceil(200 / 2) / 40) steps per epoch
    objectives = [h["objective"] for h in states[0]["history"]]
    assert objectives == [h["objective"] for h in states[1]["history"]]
    assert all(torch.isfinite(torch.tensor(objectives)))


@pytest.mark.slow
def test_checkpoint_from_two_ranks_resumes_on_one(tmp_path):
    states = _run(tmp_path, "checkpoint")
    _assert_same_state(*states)
    learner = _learner()
    learner.fit(
        _data(),
        epochs=1,
        batch_size=BATCH,
        progress=False,
        checkpoint=tmp_path / "ckpt.pt",
        resume=True,
    )
    # one rank: 5 steps per epoch; the 3 done on two ranks are not redone
    assert learner.step_count == 5
    assert [h["step"] for h in learner.history] == [1, 2, 3, 4, 5]
    assert learner.history[:3] == states[0]["history"]


@pytest.mark.slow
def test_fit_runs_unchanged_under_torchrun(tmp_path):
    import subprocess

    script = tmp_path / "train.py"
    script.write_text(
        "import torch, fastamort\n"
        "from fastamort.models import FactorAnalysis\n"
        "torch.manual_seed(0)\n"
        "data = FactorAnalysis(3, 1).sample(120)[1]\n"
        "learner = fastamort.AmortisedLearner(FactorAnalysis(3, 1), n_sleep=200, n_held_out=40)\n"
        "learner.fit(data, epochs=1, batch_size=30, progress=True)\n"
        "w = learner.model.weight.detach()\n"
        "import torch.distributed as dist\n"
        "out = [torch.empty_like(w) for _ in range(dist.get_world_size())]\n"
        "dist.all_gather(out, w)\n"
        "assert torch.equal(out[0], out[1]), 'ranks diverged'\n"
        "import sys, pathlib\n"
        "out_dir = pathlib.Path(sys.argv[1])\n"
        "(out_dir / f'rank{dist.get_rank()}.txt').write_text(str(learner.step_count))\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(script),
        str(tmp_path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    steps = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert steps == ["2", "2"]  # 120 points, 60 per rank, batches of 30


@pytest.mark.slow
def test_demo_runs_unchanged_under_torchrun(tmp_path):
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "fastamort",
        "demo",
        "--quick",
        "--no-progress",
        "--no-figure",
        "--out",
        str(tmp_path / "demo"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert res.stdout.count("exact mean log-likelihood") == 1  # rank 0 alone reports
    import json

    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["steps"] == 6  # 200 points, 100 per rank, batches of 50, 3 epochs


def test_sleep_seeds_fit_torch_for_every_learner_seed():
    assert sleep_seed(7, 1, 3) == (7 * 1_000_003 + 3) * 65_537 + 1  # small seeds: as before
    for seed in (0, 2**31, 2**32 - 1):  # the learner takes seeds in [0, 2**32)
        torch.manual_seed(sleep_seed(seed, 7, 10**9))
    assert sleep_seed(2**32 - 1, 0, 1) != sleep_seed(2**32 - 1, 1, 1)


def test_shard_order_checks_rank_and_world_size():
    order = torch.arange(10)
    for rank, world, match in ((1, 1, "rank: expected 0 <= rank"), (-1, 2, "rank: expected an"),
                               (0, 0, "world_size: expected an integer >= 1")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            shard_order(order, rank, world)
    with pytest.raises(TypeError, match="order: expected a 1-D tensor"):
        shard_order(order.reshape(2, 5), 0, 2)
