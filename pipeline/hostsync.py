"""A checker that a step never makes the host wait for the device, provable without a GPU.

Run a step on the ``meta`` device (shapes, no values) inside :class:`NoHostSync`. Every aten op
the step dispatches passes through it, and it raises :class:`HostSync`, naming the op and the
project line that called it, for

- an op that reads a value back to the host: ``.item()``, ``bool(t)``, ``float(t)``, ``int(t)``
  (``aten._local_scalar_dense``), a copy to the host (``.cpu()``, ``.tolist()``), ``nonzero``
  without a static size (hence boolean-mask indexing and ``masked_select``), ``unique``,
  ``bincount``, ``repeat_interleave`` without its output size, ``equal``, ``is_nonzero``;
- an op that takes a host (CPU) tensor of more than one element and computes on the device or
  copies onto it: a blocking host-to-device transfer inside the step (a 0-d CPU tensor is a
  scalar argument, not a transfer), and ``torch.tensor(values, device=...)`` of several values.

Pure host work (a CPU-only op on CPU tensors, such as reading the CPU step counter of
``torch.optim.AdamW``) is not a sync and is let through. On CUDA the same question is asked of
a real step by ``torch.cuda.set_sync_debug_mode("error")`` (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import traceback
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
PROJECT = Path(__file__).resolve().parent

# ops whose output shape or value needs the device's data on the host
READ_BACK = {
    aten._local_scalar_dense.default: "reads a value back (.item(), bool(), float(), int(), .tolist())",
    aten.nonzero.default: "nonzero() without a static size (boolean-mask indexing, masked_select, where(cond))",
    aten.masked_select.default: "masked_select (boolean-mask indexing)",
    aten.bincount.default: "bincount (its length depends on the largest value)",
    aten._unique2.default: "unique()",
    aten.unique_consecutive.default: "unique_consecutive()",
    aten.unique_dim.default: "unique(dim=...)",
    aten.repeat_interleave.Tensor: "repeat_interleave with tensor repeats and no output_size",
    aten.equal.default: "torch.equal (returns a host bool)",
    aten.is_nonzero.default: "is_nonzero (bool of a tensor)",
}


class HostSync(AssertionError):
    """A step made the host wait for the device."""


def _caller() -> str:
    """The innermost project frame (``pipeline/...:line in function``) of the current stack."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        path = Path(frame.filename)
        if PROJECT in path.parents and path.name != "hostsync.py":
            return f"{path.relative_to(PROJECT.parent)}:{frame.lineno} in {frame.name}"
    return "outside pipeline/"


INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._unsafe_index.Tensor}
FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray}


class _Dispatch(TorchDispatchMode):
    """The aten-level checks of :class:`NoHostSync`."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.seen += 1
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(t.device.type != "cpu" for t in tensors)  # host-only work is no sync
        if (
            on_device
            and func in READ_BACK
            and not (func is aten.repeat_interleave.Tensor and kwargs.get("output_size"))
        ):
            raise HostSync(f"{func}: {READ_BACK[func]}, at {_caller()}")
        if (
            on_device
            and func in INDEXING
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_leaves(args[1:2]))
        ):
            raise HostSync(f"{func}: boolean-mask indexing (a nonzero() of the mask), at {_caller()}")
        to_host = (func is aten._to_copy.default and torch.device(kwargs.get("device") or "meta").type == "cpu") or (
            func is aten.copy_.default and args[0].device.type == "cpu"
        )
        if on_device and to_host:
            raise HostSync(f"{func}: a device-to-host copy (.cpu(), .tolist(), .numpy()), at {_caller()}")
        out = func(*args, **kwargs)
        hosted = [t for t in tensors if t.device.type == "cpu" and t.numel() > 1]
        if hosted:
            produced = [o for o in tree_leaves(out) if isinstance(o, torch.Tensor)]
            if {t.device.type for t in tensors + produced} - {"cpu"}:
                raise HostSync(
                    f"{func}: takes a host tensor of shape {tuple(hosted[0].shape)} inside the step (a "
                    f"host-to-device transfer the step waits for), at {_caller()}"
                )
        return out


class _Factories(TorchFunctionMode):
    """``torch.tensor(data, device=...)`` of more than one value off the CPU: built on the host
    and copied (never dispatched as a copy, so :class:`_Dispatch` cannot see it)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            device = kwargs.get("device")
            data = args[0] if args else kwargs.get("data")
            many = not isinstance(data, int | float | bool | torch.Tensor) and len(data) > 1
            if device is not None and torch.device(device).type != "cpu" and many:
                raise HostSync(f"{func.__name__} of host values onto {device} inside the step, at {_caller()}")
        return func(*args, **kwargs)


class NoHostSync:
    """Raise :class:`HostSync` on any op of the block that would make the host wait.

    ``with NoHostSync() as check: step()``; ``check.seen`` counts the aten ops checked (a
    checker that saw nothing proves nothing).
    """

    def __enter__(self) -> NoHostSync:
        self._dispatch, self._factories = _Dispatch(), _Factories()
        self._factories.__enter__()
        self._dispatch.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._dispatch.__exit__(*exc)
        self._factories.__exit__(*exc)

    @property
    def seen(self) -> int:
        return self._dispatch.seen
