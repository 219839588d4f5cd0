"""Learner checkpoints (fastamort.checkpoint): safe loading, checks before any change,
checksums, atomic writes through symlinks with the umask's mode, an up-front write probe,
stale temporary files, learning rate schedulers and the 0.1.0 format."""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fastamort
from fastamort import AmortisedLearner, checkpoint
from fastamort.kernels import Matern52
from fastamort.models import CircleModel, FactorAnalysis
from fastamort.ops.standard_normal import torch_stream

ROOT = Path(__file__).resolve().parent.parent
OLD_CHECKPOINT = Path(__file__).resolve().parent / "data" / "learner-checkpoint-0.1.0.pt"


def _data(n=60):
    """The data of tests/data/learner-checkpoint-0.1.0.pt (written by fastamort 0.1.0 after
    3 steps of ``_learner().fit(_data(), epochs=1, batch_size=20)`` under manual_seed(11)).
    The global RNG is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        truth = FactorAnalysis(5, 2).double()
        with torch.no_grad():
            truth.bias.copy_(torch.randn(5))
            truth.likelihood.log_std.copy_(torch.log(0.3 + torch.rand(5)))
        return truth.sample(n)[1][:, :3].contiguous()


def _learner(seed=0, model=None, **kwargs):
    torch.manual_seed(seed)
    model = FactorAnalysis(3, 1).double() if model is None else model
    options = {"n_sleep": 200, "n_held_out": 50, "lr": 0.02, "seed": 3, **kwargs}
    return AmortisedLearner(model, **options)


def _fit(learner, path, data=None, **kwargs):
    options = {"epochs": 1, "batch_size": 20, "progress": False, "checkpoint": path, **kwargs}
    return learner.fit(_data() if data is None else data, **options)


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    path = tmp_path_factory.mktemp("written") / "ck.pt"
    torch.manual_seed(11)
    _fit(_learner(), path)
    return path


def _written(tmp_path, source):
    """A copy of the checkpoint of 3 steps of ``_learner()`` (``source``: the fixture's)."""
    path = tmp_path / "ck.pt"
    shutil.copy(source, path)
    return path


def _snapshot(learner):
    return {
        "params": {k: v.clone() for k, v in learner.model.state_dict().items()},
        "kernel": {k: v.clone() for k, v in learner.kernel.state_dict().items()},
        "log_lam": learner.log_lam.detach().clone(),
        "optimizer": copy.deepcopy(learner.optimizer.state_dict()),
        "step": learner.step_count,
        "history": list(learner.history),
    }


def _assert_unchanged(learner, before):
    after = _snapshot(learner)
    for part in ("params", "kernel"):
        for k, v in before[part].items():
            assert torch.equal(after[part][k], v), f"{part}.{k} was changed by a failed load"
    assert torch.equal(after["log_lam"], before["log_lam"])
    assert after["optimizer"]["param_groups"] == before["optimizer"]["param_groups"]
    assert after["step"] == before["step"] and after["history"] == before["history"]


# -- safe format ---------------------------------------------------------------------------
def test_checkpoint_loads_with_weights_only_and_records_version_and_settings(tmp_path, three_steps):
    path = _written(tmp_path, three_steps)
    data = torch.load(path, weights_only=True)  # no allow-list: plain tensors and containers
    assert data["format"] == "fastamort.AmortisedLearner" and data["version"] == 2
    assert data["fastamort"] == fastamort.__version__
    cfg = data["config"]
    assert cfg["n_sleep"] == 200 and cfg["solver"] == "exact" and cfg["n_held_out"] == 50
    assert cfg["model"].endswith("FactorAnalysis") and cfg["kernel"].endswith("Gaussian")
    assert cfg["optimizer"] == "torch.optim.adam.Adam"
    assert cfg["optimizer_settings"]["lr"] == 0.02
    assert cfg["data_shape"] == [60, 3] and cfg["batch_size"] == 20
    rng = data["state"]["rng"]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["python"], list)
    assert isinstance(rng["numpy"]["key"], list) and len(rng["numpy"]["key"]) == 624


def test_resume_continues_bit_exactly_with_a_scheduler(tmp_path):
    def sched(learner):
        return torch.optim.lr_scheduler.StepLR(learner.optimizer, step_size=2, gamma=0.5)

    data = _data()
    straight = _learner()
    torch.manual_seed(11)
    straight.fit(data, epochs=2, batch_size=20, progress=False, scheduler=sched(straight))
    path = tmp_path / "ck.pt"
    first = _learner()
    torch.manual_seed(11)
    _fit(first, path, scheduler=sched(first))
    torch.manual_seed(999)
    resumed = _learner(seed=5)
    _fit(resumed, path, epochs=2, resume=True, scheduler=sched(resumed))
    assert [r["objective"] for r in resumed.history] == [r["objective"] for r in straight.history]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    assert straight.optimizer.param_groups[0]["lr"] == 0.02 * 0.5**3  # 6 steps, halved every 2

    with pytest.raises(ValueError, match=r"scheduler: 'torch\.optim\.lr_scheduler\.StepLR' in"):
        _fit(_learner(), path, epochs=2, resume=True)  # no scheduler now
    with pytest.raises(ValueError, match="scheduler: it schedules an optimiser that is not"):
        _fit(_learner(), path, scheduler=sched(_learner()))


# -- everything is checked before anything changes -----------------------------------------
@pytest.mark.parametrize(
    ("other", "fit_kwargs", "match"),
    [
        ({"model": FactorAnalysis(3, 2).double()}, {},
         r"model: 'weight' has shape \(3, 1\) in the checkpoint, \(3, 2\) here"),
        ({"model": CircleModel(3).double()}, {}, r"model: '.*FactorAnalysis' in the checkpoint"),
        ({"kernel": Matern52()}, {}, r"kernel: '.*Gaussian' in the checkpoint, '.*Matern52'"),
        ({"lr": 0.05}, {}, r"optimizer_settings: .*'lr': 0.02.* in the checkpoint"),
        ({"solver": "nystrom"}, {}, r"solver: 'exact' in the checkpoint, 'nystrom' here"),
        ({"n_sleep": 300}, {}, r"n_sleep: 200 in the checkpoint, 300 here"),
        ({"learn_kernel": False}, {}, r"learn_kernel: True in the checkpoint, False here"),
        ({}, {"data": _data(80)}, r"data_shape: \[60, 3\] in the checkpoint, \[80, 3\] here"),
        ({}, {"batch_size": 30}, r"batch_size: 20 in the checkpoint, 30 here"),
    ],
    ids=["latent-size", "model-class", "kernel-class", "lr", "solver", "n_sleep",
         "learn_kernel", "data-size", "batch-size"],
)  # fmt: skip
def test_a_different_learner_is_refused_naming_the_difference_and_left_unchanged(
    tmp_path, three_steps, other, fit_kwargs, match
):
    path = _written(tmp_path, three_steps)
    learner = _learner(seed=4, **other)
    before = _snapshot(learner)
    rng = torch.get_rng_state()
    with pytest.raises(
        ValueError, match=r"checkpoint: '.*ck\.pt' does not fit this learner"
    ) as err:
        _fit(learner, path, epochs=2, resume=True, **fit_kwargs)
    assert re.search(match, str(err.value)), str(err.value)
    _assert_unchanged(learner, before)
    assert torch.equal(torch.get_rng_state(), rng)


def test_an_adam_checkpoint_does_not_load_into_an_sgd_learner(tmp_path, three_steps):
    path = _written(tmp_path, three_steps)
    torch.manual_seed(0)
    model = FactorAnalysis(3, 1).double()
    sgd = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    learner = _learner(model=model, optimizer=sgd)
    with pytest.raises(
        ValueError, match=r"optimizer: 'torch\.optim\.adam\.Adam' in the checkpoint"
    ):
        learner.load_checkpoint(path)
    assert sgd.param_groups[0]["lr"] == 0.5 and sgd.param_groups[0]["momentum"] == 0.9
    _fit(learner, tmp_path / "other.pt")  # the SGD learner still trains
    assert learner.step_count == 3


def test_a_flipped_byte_in_tensor_data_is_reported_as_corruption(tmp_path, three_steps):
    path = _written(tmp_path, three_steps)
    weight = torch.load(path, weights_only=True)["state"]["model"]["weight"]
    raw = bytearray(path.read_bytes())
    at = raw.find(weight.numpy().tobytes())
    assert at > 0 and raw.count(weight.numpy().tobytes()) == 1
    raw[at + 3] ^= 0x10
    path.write_bytes(bytes(raw))
    learner = _learner()
    before = _snapshot(learner)
    with pytest.raises(ValueError, match=r"ck\.pt' is corrupted: its contents do not match"):
        learner.load_checkpoint(path)
    _assert_unchanged(learner, before)


def test_a_structural_failure_while_loading_puts_the_learner_back(
    tmp_path, three_steps, monkeypatch
):
    path = _written(tmp_path, three_steps)
    learner = _learner(seed=4)
    before = _snapshot(learner)

    def broken(self, state):  # fails after the model and kernel were loaded
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(torch.optim.Adam, "load_state_dict", broken)
    with pytest.raises(ValueError, match=r"simulated failure.*the learner is unchanged"):
        learner.load_checkpoint(path)
    monkeypatch.undo()
    _assert_unchanged(learner, before)


def test_a_checkpoint_from_a_newer_format_or_another_program_is_named(tmp_path, three_steps):
    path = _written(tmp_path, three_steps)
    data = torch.load(path, weights_only=True)
    data["version"] = 99
    torch.save(data, tmp_path / "new.pt")
    with pytest.raises(ValueError, match=r"format version 99, written by a newer fastamort"):
        _learner().load_checkpoint(tmp_path / "new.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=r"foreign\.pt' is not a fastamort learner checkpoint"):
        _learner().load_checkpoint(tmp_path / "foreign.pt")


# -- the 0.1.0 format ----------------------------------------------------------------------
def test_a_checkpoint_of_fastamort_0_1_0_resumes_with_a_warning(tmp_path):
    path = tmp_path / "old.pt"
    shutil.copy(OLD_CHECKPOINT, path)
    with pytest.raises(Exception, match="Weights only load failed"):  # it pickles NumPy arrays
        torch.load(path, weights_only=True)
    learner = _learner(seed=5)
    # fastamort 0.1.0 drew the sleep noise from torch's generator: so must both runs here for
    # the resumed one to continue the file's run
    with torch_stream():
        with pytest.warns(checkpoint.CheckpointWarning, match=r"fastamort 0\.1\.0 \(format 1\)"):
            _fit(learner, path, epochs=2, resume=True)
        assert learner.step_count == 6 and [r["step"] for r in learner.history] == list(range(1, 7))
        straight = _learner()
        torch.manual_seed(11)
        _fit(straight, None, epochs=2)
    for a, b in zip(straight.model.parameters(), learner.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)  # same run, BLAS may differ
    assert torch.load(path, weights_only=True)["version"] == 2  # rewritten in the new format


# -- writing -------------------------------------------------------------------------------
def test_writes_follow_a_symlink_and_respect_the_umask(tmp_path):
    target = tmp_path / "store" / "real.pt"
    target.parent.mkdir()
    link = tmp_path / "ck.pt"
    link.symlink_to(target)
    old = os.umask(0o002)
    try:
        torch.manual_seed(11)
        _fit(_learner(), link)
    finally:
        os.umask(old)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert torch.load(target, weights_only=True)["state"]["step"] == 3
    assert (target.stat().st_mode & 0o777) == 0o664
    target.chmod(0o640)  # a replaced file keeps the mode it was given
    torch.manual_seed(11)
    _fit(_learner(), link, epochs=2, resume=True)
    assert (target.stat().st_mode & 0o777) == 0o640
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


@contextlib.contextmanager
def _read_only_folder(tmp_path):
    """A folder in which creating files fails (a read-only mount as root, else mode 0o555)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
            capture_output=True,
        )
        mounted = proc.returncode == 0
        if not mounted:
            pytest.skip("running as root and cannot mount a read-only tmpfs")
    else:
        folder.chmod(0o555)
    try:
        try:
            (folder / "probe").write_bytes(b"")
        except OSError:
            yield folder
        else:
            pytest.skip("could not make a read-only folder here")
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
        else:
            folder.chmod(0o755)


def test_an_unwritable_checkpoint_folder_fails_before_the_first_step(tmp_path, monkeypatch):
    # os.access answers from mode bits and can say yes where a write fails (root on NFS with
    # root squash, some sandboxes); pretend it does, so only a real write can tell.
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    with _read_only_folder(tmp_path) as folder:
        learner = _learner()
        with pytest.raises(ValueError, match=r"checkpoint: cannot write '.*ck\.pt'"):
            _fit(learner, folder / "ck.pt", epochs=3, checkpoint_every=10)
        assert learner.step_count == 0 and not learner.initialised


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys, torch
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    import test_checkpoint as t
    torch.manual_seed(11)
    learner = t._learner()
    real_save = torch.save
    def killed(obj, fh, *a, **k):  # half a file, then SIGKILL: no cleanup can run
        fh.write(b"PK\\x03\\x04 half a checkpoint")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    learner.fit(t._data(), epochs=1, batch_size=20, progress=False, checkpoint={path!r},
                checkpoint_every=1, callbacks=[lambda l, r: setattr(torch, "save", killed)
                                               if r["step"] == 2 else None])
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_write_killed_by_sigkill_leaves_the_last_checkpoint_and_its_temp_is_cleaned(tmp_path):
    path = tmp_path / "ck.pt"
    script = KILLED_WRITER.format(root=str(ROOT), tests=str(Path(__file__).parent), path=str(path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    temps = [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert len(temps) == 1, list(tmp_path.iterdir())  # the killed write's
    assert torch.load(path, weights_only=True)["state"]["step"] == 1  # the last complete one
    learner = _learner(seed=5)
    torch.manual_seed(11)
    _fit(learner, path, resume=True)
    assert learner.step_count == 3
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_continues_bit_exactly(tmp_path):
    def learner(seed):
        torch.manual_seed(seed)
        return _learner(seed, model=FactorAnalysis(3, 1).to("cuda", torch.float64))

    straight = learner(0)
    torch.manual_seed(11)
    _fit(straight, None, epochs=2)
    first = learner(0)
    torch.manual_seed(11)
    _fit(first, tmp_path / "ck.pt")
    assert "cuda" in torch.load(tmp_path / "ck.pt", weights_only=True)["state"]["rng"]
    torch.manual_seed(999)
    resumed = learner(5)
    _fit(resumed, tmp_path / "ck.pt", epochs=2, resume=True)
    assert [r["objective"] for r in resumed.history] == [r["objective"] for r in straight.history]
    assert resumed.model.weight.device.type == "cuda"
