"""Checkpoints of :class:`fastamort.AmortisedLearner`: safe to load, checked before anything
changes, written atomically.

A checkpoint file (format 2) is one dict written by ``torch.save`` and read by
``torch.load(weights_only=True)``: it holds only tensors, numbers, strings, ``None`` and
lists, tuples and dicts of them, so reading a file never runs code from it.

``format``, ``version``
    ``"fastamort.AmortisedLearner"`` and :data:`FORMAT_VERSION`.
``fastamort``
    the package version that wrote it.
``config``
    what must match for a resume: the classes of the model, kernel, optimisers and learning
    rate scheduler, the optimisers' constructor settings (``Optimizer.defaults``), the
    learner's hyperparameters (:data:`HYPERPARAMETERS`), and the data shape and batch size
    of the :meth:`~fastamort.AmortisedLearner.fit` that wrote it.
``state``
    model, kernel, log λ, optimisers, scheduler, step, history, warm start, sleep seeds and
    the random number generators (torch's as tensors, Python's and NumPy's as lists).
``checksum``
    SHA-256 of everything above, tensor bytes included: a changed byte is reported as a
    corrupted file, never loaded.

Loading checks everything before it changes anything: the checksum, every config entry
(an error names each difference), and the names, shapes and dtypes of every tensor of the
model, kernel and optimiser states; then it restores the state, and if that still fails, puts
the learner back as it was. The optimisers' current hyperparameters (a schedule may have
changed the learning rate) continue from the checkpoint, as ``Optimizer.load_state_dict`` does.

Format 1 (fastamort 0.1.0) pickled NumPy's RNG state as an array: it is read with
``weights_only=True`` and NumPy's array reconstruction allowed (data only), and resumes with
a warning, since it records no configuration to check.

Writing goes through :mod:`fastamort._atomic`: a temporary file beside the target, fsync, and
a rename, through symlinks, with the umask's mode; :func:`probe` tries a real write before
training starts and removes temporary files left by a killed run.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import random
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import _atomic

if TYPE_CHECKING:
    from .learner import AmortisedLearner

FORMAT = "fastamort.AmortisedLearner"
FORMAT_VERSION = 2
#: Learner attributes recorded in ``config`` that a resume must match.
HYPERPARAMETERS = (
    "n_sleep", "n_held_out", "estimator", "learn_kernel", "seed", "max_grad_norm", "solver",
    "n_inducing", "n_features", "tol", "inducing", "warm_start", "sleep_refresh", "lam", "trend",
)  # fmt: skip


class CheckpointWarning(UserWarning):
    """A checkpoint was loaded with fewer checks than usual (an old format)."""


# -- random number generators ------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The global RNG states: torch's (and CUDA's) as byte tensors, Python's and NumPy's as
    plain lists and numbers."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - user models may use it
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": [int(k) for k in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _check_rng_state(state: object) -> None:
    if not isinstance(state, dict) or not {"torch", "python", "numpy"} <= set(state):
        raise ValueError("the random number generator states are missing")
    if not isinstance(state["torch"], torch.Tensor) or state["torch"].dtype != torch.uint8:
        raise ValueError("the torch RNG state is not a byte tensor")


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores :func:`rng_state` (also the tuple form of format 1)."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(i) for i in internal), gauss))
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        key = np.asarray(np_state["key"], dtype=np.uint32)
        np.random.set_state(  # noqa: NPY002
            ("MT19937", key, np_state["pos"], np_state["has_gauss"], np_state["gauss"])
        )
    else:  # format 1: NumPy's legacy tuple
        np.random.set_state(tuple(np_state))  # noqa: NPY002
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# -- checksum ----------------------------------------------------------------------------
def _digest(obj: Any, h: Any, where: str) -> None:
    """Feeds a canonical encoding of ``obj`` to the hash ``h``; TypeError (naming ``where``)
    for anything ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _digest(key, h, where)
            _digest(obj[key], h, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj))
        for i, item in enumerate(obj):
            _digest(item, h, f"{where}[{i}]")
    elif obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):
        h.update(b"b1" if obj else b"b0")
    elif isinstance(obj, int):
        h.update(b"I" + str(obj).encode() + b";")
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        h.update(b"S%d:" % len(data) + data)
    else:
        raise TypeError(
            f"checkpoint: cannot store a {type(obj).__name__} at {where} (a checkpoint holds "
            "tensors, numbers, strings, None and lists/tuples/dicts of them)"
        )


def checksum(content: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's content (all entries but ``checksum``)."""
    h = hashlib.sha256()
    _digest({k: v for k, v in content.items() if k != "checksum"}, h, "checkpoint")
    return h.hexdigest()


# -- what a checkpoint holds -------------------------------------------------------------
def _qualname(obj: object) -> str | None:
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__qualname__}"


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays and torch sizes made plain Python."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):  # torch.Size too
        return [_plain(v) for v in value]
    return value


def _settings(optimizer: torch.optim.Optimizer | None) -> dict[str, Any] | None:
    """An optimiser's constructor settings (``defaults``), as plain comparable values."""
    if optimizer is None:
        return None
    return {
        k: (v.tolist() if isinstance(v, torch.Tensor) else _plain(v))
        for k, v in optimizer.defaults.items()
    }


def config(learner: AmortisedLearner) -> dict[str, Any]:
    """What a resume must match (see the module docstring)."""
    fit = learner._fit_config or {}
    out: dict[str, Any] = {
        "model": _qualname(learner.model),
        "kernel": _qualname(learner.kernel),
        "optimizer": _qualname(learner.optimizer),
        "optimizer_settings": _settings(learner.optimizer),
        "kernel_optimizer": _qualname(learner.kernel_optimizer),
        "kernel_optimizer_settings": _settings(learner.kernel_optimizer),
        "scheduler": _qualname(learner.scheduler),
        "data_shape": fit.get("data_shape"),
        "batch_size": fit.get("batch_size"),
    }
    hyper = learner.hyperparameters()
    out.update({name: _plain(hyper[name]) for name in HYPERPARAMETERS})
    return out


def content(learner: AmortisedLearner) -> dict[str, Any]:
    """The whole checkpoint of ``learner`` as a dict (with its checksum)."""
    warm = learner._warm
    state = {
        "model": learner.model.state_dict(),
        "kernel": learner.kernel.state_dict(),
        "log_lam": learner.log_lam.detach().clone(),
        "optimizer": learner.optimizer.state_dict(),
        "kernel_optimizer": learner.kernel_optimizer.state_dict(),
        "scheduler": None if learner.scheduler is None else learner.scheduler.state_dict(),
        "step": learner.step_count,
        "initialised": learner.initialised,
        "history": _plain(list(learner.history)),
        "rng": rng_state(),
        "warm": None
        if warm is None
        else {"x": warm.x, "weights": warm.weights, "aligned": bool(warm.aligned)},
        "sleep_seeds": None if learner._sleep_seeds is None else list(learner._sleep_seeds),
        "sleep_turn": learner._sleep_turn,
        "obs_shape": None if learner._obs_shape is None else list(learner._obs_shape),
    }
    from . import __version__

    out = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "fastamort": __version__,
        "config": config(learner),
        "state": state,
    }
    out["checksum"] = checksum(out)
    return out


# -- writing -----------------------------------------------------------------------------
def check_path(path: object) -> Path:
    """``path`` as a checkpoint file path, with a real write tried beside it now (see
    :func:`fastamort._atomic.probe_writable`): TypeError or ValueError naming the problem."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint: expected a file path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint: {str(path)!r} is a folder; expected a file path")
    try:
        _atomic.probe_writable(path)
    except OSError as err:
        raise ValueError(f"checkpoint: cannot write {str(path)!r}: {err}") from err
    return path


def save(learner: AmortisedLearner, path: str | os.PathLike) -> None:
    """Writes ``learner``'s checkpoint to ``path`` atomically."""
    data = content(learner)
    with _atomic.atomic_open(path, "wb") as fh:
        torch.save(data, fh)


# -- reading -----------------------------------------------------------------------------
def _numpy_array_globals() -> list[Any]:
    """What format 1's pickled NumPy RNG state needs: NumPy's array reconstruction (data
    only; nothing here can run code from the file)."""
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    allowed: list[Any] = [np.ndarray, np.dtype]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        allowed.append((reconstruct, f"{module}._reconstruct"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed.append(dtypes.UInt32DType)
    return allowed


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU), with its format and checksum checked:
    ValueError naming the file when it cannot be read, is not a learner checkpoint, is from a
    newer fastamort, or is corrupted."""
    name = str(path)
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint: cannot read {name!r} ({type(err).__name__}: {str(err)[:300]})"
        ) from err
    if not isinstance(data, dict):
        raise ValueError(f"checkpoint: {name!r} is not a fastamort learner checkpoint")
    version = data.get("version")
    if data.get("format") == FORMAT:
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"checkpoint: {name!r} has format version {version!r}, written by a newer "
                f"fastamort ({data.get('fastamort')!r}); this one reads versions 1 to "
                f"{FORMAT_VERSION}"
            )
        if data.get("checksum") != checksum(data):
            raise ValueError(
                f"checkpoint: {name!r} is corrupted: its contents do not match the checksum "
                "written with them (the file was changed or damaged after it was written)"
            )
        return data
    if version == 1 and "model" in data:  # fastamort 0.1.0: the state at the top level
        return {"format": FORMAT, "version": 1, "fastamort": "0.1.0", "config": None,
                "state": data}  # fmt: skip
    raise ValueError(f"checkpoint: {name!r} is not a fastamort learner checkpoint")


def _differences(saved: dict[str, Any], current: dict[str, Any], fit: bool) -> list[str]:
    out = []
    for key, here in current.items():
        there = saved.get(key)
        if key in ("data_shape", "batch_size") and (not fit or there is None or here is None):
            continue  # only a fit knows its data
        if _plain(there) != _plain(here) and not _both_nan(there, here):
            out.append(f"{key}: {there!r} in the checkpoint, {here!r} here")
    return out


def _both_nan(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def _check_tensors(part: str, saved: object, current: dict[str, Any]) -> None:
    """Same names, shapes and dtypes as ``current`` (a module's state dict)."""
    if not isinstance(saved, dict):
        raise ValueError(f"{part}: missing")
    missing = [k for k in current if k not in saved]
    extra = [k for k in saved if k not in current]
    if missing or extra:
        raise ValueError(
            f"{part}: the checkpoint's entries differ from this learner's"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; not in this learner: {', '.join(extra)}" if extra else "")
        )
    for key, here in current.items():
        there = saved[key]
        if not isinstance(there, torch.Tensor):
            raise ValueError(f"{part}: '{key}' is not a tensor in the checkpoint")
        if there.shape != here.shape:
            raise ValueError(
                f"{part}: '{key}' has shape {tuple(there.shape)} in the checkpoint, "
                f"{tuple(here.shape)} here"
            )
        if there.dtype != here.dtype:
            raise ValueError(
                f"{part}: '{key}' is {there.dtype} in the checkpoint, {here.dtype} here"
            )


#: torch.optim optimisers whose per-parameter state tensors differ from the parameter's shape.
_FACTORED_STATE = ("LBFGS", "Adafactor")


def _check_optimizer(part: str, saved: object, optimizer: torch.optim.Optimizer) -> None:
    """Same parameter groups (sizes and setting names) and per-parameter state tensors that fit
    the parameters, so ``load_state_dict`` cannot fail or leave a broken optimiser."""
    if not isinstance(saved, dict) or not {"state", "param_groups"} <= set(saved):
        raise ValueError(f"{part}: missing or not an optimiser state")
    groups, current = saved["param_groups"], optimizer.param_groups
    if len(groups) != len(current):
        raise ValueError(
            f"{part}: {len(groups)} parameter groups in the checkpoint, {len(current)} here"
        )
    params = []
    for i, (there, here) in enumerate(zip(groups, current, strict=True)):
        if len(there["params"]) != len(here["params"]):
            raise ValueError(
                f"{part}: group {i} has {len(there['params'])} parameters in the checkpoint, "
                f"{len(here['params'])} here"
            )
        names = set(here) - {"params"}
        if set(there) - {"params"} - {"initial_lr"} != names - {"initial_lr"}:
            raise ValueError(
                f"{part}: group {i} has settings {sorted(set(there) - {'params'})} in the "
                f"checkpoint, {sorted(names)} here"
            )
        params += list(zip(there["params"], here["params"], strict=True))
    if type(optimizer).__name__ in _FACTORED_STATE or not type(optimizer).__module__.startswith(
        "torch.optim"
    ):
        return  # per-parameter state need not have the parameter's shape
    for saved_id, param in params:
        entry = saved["state"].get(saved_id)
        if entry is None:
            continue
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != param.shape:
                raise ValueError(
                    f"{part}: the state '{key}' of a parameter of shape {tuple(param.shape)} "
                    f"has shape {tuple(value.shape)} in the checkpoint"
                )


def _check_state(learner: AmortisedLearner, state: dict[str, Any]) -> None:
    """Everything that loading ``state`` into ``learner`` needs, checked without changing it."""
    needed = ("model", "kernel", "log_lam", "optimizer", "kernel_optimizer", "step", "history")
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"state: missing {', '.join(missing)}")
    _check_tensors("model", state["model"], learner.model.state_dict())
    _check_tensors("kernel", state["kernel"], learner.kernel.state_dict())
    _check_tensors("log_lam", {"log_lam": state["log_lam"]}, {"log_lam": learner.log_lam})
    _check_optimizer("optimizer", state["optimizer"], learner.optimizer)
    _check_optimizer("kernel_optimizer", state["kernel_optimizer"], learner.kernel_optimizer)
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise ValueError(f"step: expected a non-negative integer, got {state['step']!r}")
    _check_rng_state(state.get("rng"))


_RESTORED_ATTRIBUTES = (
    "step_count", "initialised", "history", "_warm", "_sleep_seeds", "_sleep_turn", "_obs_shape",
)  # fmt: skip


def _snapshot(learner: AmortisedLearner) -> Callable[[], None]:
    """A function that puts ``learner`` back as it is now."""
    saved = {
        "model": {k: v.clone() for k, v in learner.model.state_dict().items()},
        "kernel": {k: v.clone() for k, v in learner.kernel.state_dict().items()},
        "log_lam": learner.log_lam.detach().clone(),
        "optimizer": copy.deepcopy(learner.optimizer.state_dict()),
        "kernel_optimizer": copy.deepcopy(learner.kernel_optimizer.state_dict()),
        "scheduler": None if learner.scheduler is None else learner.scheduler.state_dict(),
        "rng": rng_state(),
        "attrs": {name: copy.copy(getattr(learner, name)) for name in _RESTORED_ATTRIBUTES},
    }

    def restore() -> None:
        learner.model.load_state_dict(saved["model"])
        learner.kernel.load_state_dict(saved["kernel"])
        with torch.no_grad():
            learner.log_lam.copy_(saved["log_lam"])
        learner.optimizer.load_state_dict(saved["optimizer"])
        learner.kernel_optimizer.load_state_dict(saved["kernel_optimizer"])
        if saved["scheduler"] is not None:
            learner.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        for name, value in saved["attrs"].items():
            setattr(learner, name, value)

    return restore


@contextmanager
def _all_or_nothing(learner: AmortisedLearner) -> Iterator[None]:
    restore = _snapshot(learner)
    try:
        yield
    except BaseException:
        restore()
        raise


def restore(
    learner: AmortisedLearner,
    data: dict[str, Any],
    *,
    source: str = "checkpoint",
    fit: bool = False,
) -> None:
    """Loads checkpoint ``data`` (from :func:`read` or :func:`content`) into ``learner``.

    Every check runs first; a failure raises ValueError naming ``source`` and the difference,
    with ``learner`` unchanged. ``fit``: called by :meth:`AmortisedLearner.fit`, whose data
    shape and batch size are then compared too.
    """
    from .solvers import WarmStart

    prefix = f"checkpoint: {source!r}"
    state = data.get("state")
    if not isinstance(state, dict):
        raise ValueError(f"{prefix} holds no learner state")
    saved_config = data.get("config")
    if saved_config is None:
        warnings.warn(
            f"{prefix} was written by fastamort 0.1.0 (format 1), which records no "
            "configuration: the solver, n_sleep and data shape cannot be checked; the next "
            "checkpoint is written in the current format",
            CheckpointWarning,
            stacklevel=3,
        )
    else:
        diffs = _differences(saved_config, config(learner), fit)
        if diffs:
            raise ValueError(
                f"{prefix} does not fit this learner, which is set up differently (resume with "
                "the same settings, or start a new checkpoint): " + "; ".join(diffs)
            )
    if (state.get("scheduler") is None) != (learner.scheduler is None):
        has = "has" if state.get("scheduler") is not None else "has no"
        raise ValueError(
            f"{prefix} {has} learning rate scheduler state; pass fit(scheduler=...) as in the "
            "run that wrote it"
        )
    try:
        _check_state(learner, state)
    except ValueError as err:
        raise ValueError(f"{prefix} does not fit this learner: {err}") from err

    device = learner.log_lam.device
    warm = state.get("warm")
    if isinstance(warm, (tuple, list)):  # format 1
        warm = {"x": warm[0], "weights": warm[1], "aligned": warm[2]}
    try:
        with _all_or_nothing(learner):
            learner.model.load_state_dict(state["model"])
            learner.kernel.load_state_dict(state["kernel"])
            with torch.no_grad():
                learner.log_lam.copy_(state["log_lam"])
            learner.optimizer.load_state_dict(state["optimizer"])
            learner.kernel_optimizer.load_state_dict(state["kernel_optimizer"])
            if learner.scheduler is not None:
                learner.scheduler.load_state_dict(state["scheduler"])
            learner.step_count = int(state["step"])
            learner.initialised = bool(state["initialised"])
            learner.history = [dict(r) for r in state["history"]]
            learner._warm = (
                None
                if warm is None or not learner.warm_start
                else WarmStart(
                    warm["x"].to(device), warm["weights"].to(device), bool(warm["aligned"])
                )
            )
            seeds = state.get("sleep_seeds")
            learner._sleep_seeds = None if seeds is None else [int(s) for s in seeds]
            learner._sleep_turn = int(state.get("sleep_turn", 0))
            obs_shape = state.get("obs_shape")
            learner._obs_shape = None if obs_shape is None else tuple(obs_shape)
            set_rng_state(state["rng"])
    except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as err:
        raise ValueError(
            f"{prefix} does not fit this learner ({type(err).__name__}: {err}); "
            "the learner is unchanged"
        ) from err
