"""What the ops registered with ``torch.library`` (namespace ``fastamort``) share.

Each public op has two routes to the same kernels. Plain eager calls run the op module's
``autograd.Function`` directly: the dispatcher of a registered op costs several microseconds a
call, a large share of a tiny op (``fastamort bench gram --quick`` measures both routes). Under
``torch.compile`` and the ``torch.func`` transforms (:func:`traced`), the public op calls the
registered op instead, which the compiler treats as opaque (fake implementation for shapes,
registered autograd formula, value checks and the jitter policy inside its body) and which
``vmap`` batches by its registered rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from .._checks import traced

__all__ = ["autograd_inside_op", "register_batch_vmap", "register_loop_vmap", "traced"]

_C = torch._C


@contextlib.contextmanager
def autograd_inside_op() -> Iterator[None]:
    """Records autograd graphs inside an op's implementation, where the dispatcher has turned
    autograd off (the torch backend's backward differentiates its reference there)."""
    exclude = _C._dispatch_tls_local_exclude_set().remove(_C.DispatchKey.AutogradCPU)
    exclude = exclude.remove(_C.DispatchKey.ADInplaceOrView)
    with _C._ForceDispatchKeyGuard(_C._dispatch_tls_local_include_set(), exclude):
        with torch.enable_grad():
            yield


def empty_like_none(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``t``, or an empty tensor of ``like``'s kind standing for an absent output."""
    return like.new_empty(0) if t is None else t


def none_if_empty(t: torch.Tensor, wanted: bool) -> torch.Tensor | None:
    """The inverse of :func:`empty_like_none` for an output that was ``wanted`` or not."""
    return t if wanted else None


def register_batch_vmap(op: Callable, leading: Sequence[int]) -> None:
    """vmap rule of an op whose tensor arguments at positions ``leading`` are batches (B, …)
    that share B and whose outputs all lead with B: the vmapped dimension V merges into B (one
    call on (V·B, …)). When an argument outside ``leading`` is batched, one call per slice."""

    def rule(info, in_dims, *args):
        size = info.batch_size
        if any(d is not None and i not in leading for i, d in enumerate(in_dims)):
            return _loop(op, size, in_dims, args)
        merged = list(args)
        batch = None
        for i in leading:
            t, d = args[i], in_dims[i]
            if t is None:
                continue
            t = t.unsqueeze(0).expand(size, *t.shape) if d is None else t.movedim(d, 0)
            batch = t.shape[1]
            merged[i] = t.reshape(size * t.shape[1], *t.shape[2:])
        out = op(*merged)
        split = _map(out, lambda o: o.reshape(size, batch, *o.shape[1:]))
        return split, _map(out, lambda o: 0)

    torch.library.register_vmap(op, rule)


def register_loop_vmap(op: Callable) -> None:
    """vmap rule that calls ``op`` once per slice of the vmapped dimension (the backward ops:
    their outputs hold sums over the batch)."""

    def rule(info, in_dims, *args):
        return _loop(op, info.batch_size, in_dims, args)

    torch.library.register_vmap(op, rule)


def _loop(op, size, in_dims, args):
    outs = [
        op(*(a if d is None else a.select(d, j) for a, d in zip(args, in_dims, strict=True)))
        for j in range(size)
    ]
    if isinstance(outs[0], tuple):
        stacked = tuple(torch.stack(parts) for parts in zip(*outs, strict=True))
    else:
        stacked = torch.stack(outs)
    return stacked, _map(stacked, lambda o: 0)


def _map(out, fn):
    return tuple(fn(o) for o in out) if isinstance(out, tuple) else fn(out)
