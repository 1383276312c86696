"""Op registry: defines every ``patchmix::*`` op once and records which kernel serves each op on each device.

Who owns what:

* Each op's schema string lives in its contract (``patchmix.ops.contracts.<op>``). The C++ sources in
  ``csrc/<op>.cpp`` define the same schema (``TORCH_LIBRARY_FRAGMENT``) and register the CPU kernel
  ``<op>_cpu``, so that LibTorch programs linking the CMake build get working ops too. When ``patchmix._C``
  is loaded this module checks that the compiled schema equals the contract's (a stale build is refused
  with a message); when ``_C`` is missing (or refused: built against another torch, see ``_extension``) it
  defines the op itself and registers the pure-PyTorch reference
  ``<op>_reference`` as the CPU kernel, announced once with a warning. Ops without a C++ kernel (``cpp=False``)
  are defined here and served on the CPU by their reference.
* The CUDA kernel is the Triton launcher ``<op>_cuda`` from ``patchmix._kernels.<module>``, registered here
  with ``Library.impl``, never with ``wrap_triton``/``triton_op`` (they refuse interpreted kernels, pytorch
  issue 152868, and the tests run the launchers under ``TRITON_INTERPRET=1`` on the CPU). Without Triton
  (or with ``PATCHMIX_DISABLE_TRITON=1``) the reference serves CUDA tensors and ``backends()`` says so.

Device dispatch is therefore done by PyTorch's dispatcher, never by ``x.is_cuda`` branches.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from . import _extension

NAMESPACE = "patchmix"

_lib_def = torch.library.Library(NAMESPACE, "FRAGMENT")  # noqa: TOR901 - kept alive for the process
_lib_impl = torch.library.Library(NAMESPACE, "IMPL")  # noqa: TOR901

_BACKENDS: dict[str, dict[str, str]] = {}

_C, _C_ERROR = _extension.C, _extension.ERROR
if _C is None:
    warnings.warn(
        f"patchmix: CPU ops run the pure-PyTorch references, the C++ extension patchmix._C is not loaded: {_C_ERROR}",
        RuntimeWarning,
        stacklevel=2,
    )


def _load_triton_kernels():
    if os.environ.get("PATCHMIX_DISABLE_TRITON", "0") == "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


HAS_TRITON = _load_triton_kernels()


def build_info() -> dict:
    """How ``patchmix._C`` was built (compiler, OpenMP threads, ``"torch"``: the torch headers it was compiled
    with), or why it is not loaded (``"reason"``: not built, disabled, or built against another torch)."""
    if _C is None:
        return {"extension": False, "reason": _C_ERROR}
    info = dict(_C.build_info())
    info["extension"] = True
    return info


def define_op(
    name: str,
    schema: str,
    reference: Callable,
    cuda_launcher: str | None,
    *,
    kernel_module: str | None = None,
    cpp: bool = True,
    cuda_impl: tuple[Callable, str] | None = None,
) -> torch._ops.OpOverloadPacket:
    """Define ``patchmix::<name>`` (or check the compiled definition) and register its kernels.

    ``schema`` is the part after the op name, e.g. ``"(Tensor x) -> Tensor"``. ``cuda_launcher`` names the
    host function in ``patchmix._kernels.<kernel_module>`` (default: the op's name). ``cpp=False``: the op has
    no C++ kernel; the reference serves the CPU. ``cuda_impl = (kernel, description)``: an op without a Triton
    kernel serves CUDA tensors with ``kernel`` instead of the reference (e.g. its CPU kernel on host copies).
    Returns ``torch.ops.patchmix.<name>``.
    """
    qualname = f"{NAMESPACE}::{name}"
    expected = torch._C.parse_schema(qualname + schema)
    if _C is not None and cpp:
        try:
            compiled = getattr(getattr(torch.ops, NAMESPACE), name).default._schema
        except (AttributeError, RuntimeError):
            compiled = "nothing (the op is missing)"
        if str(compiled) != str(expected):
            raise ImportError(
                f"patchmix._C defines {compiled}, but this Python package expects {expected}: "
                "the extension is stale, rebuild it with `pip install --no-build-isolation -e .`"
            )
        cpu = "C++ (patchmix._C)"
    else:
        _lib_def.define(name + schema)
        _lib_impl.impl(name, reference, "CPU")
        cpu = "reference (PyTorch)" if not cpp else "reference (PyTorch, extension not built)"

    cuda = "reference (PyTorch, Triton not installed)"
    if cuda_impl is not None:
        _lib_impl.impl(name, cuda_impl[0], "CUDA")
        cuda = cuda_impl[1]
    elif cuda_launcher is not None and HAS_TRITON:
        module_name = kernel_module or name
        module = importlib.import_module(f"patchmix._kernels.{module_name}")
        _lib_impl.impl(name, getattr(module, cuda_launcher), "CUDA")
        cuda = f"Triton (patchmix._kernels.{module_name}.{cuda_launcher})"
    else:
        _lib_impl.impl(name, reference, "CUDA")
    _BACKENDS[name] = {"cpu": cpu, "cuda": cuda}
    return getattr(getattr(torch.ops, NAMESPACE), name)


def below_autograd(op: torch._ops.OpOverload, *args):
    """``op(*args)``, dispatched past the autograd layer when that is safe: for eager calls that need no gradient,
    on plain tensors with no Python dispatch mode active. The Python autograd kernel that
    ``torch.library.register_autograd`` installs costs about as much per call even then as a tiny CPU
    ``grid_mix`` itself, a noticeable share of the op on small images."""
    x = args[0]
    if type(x) is not torch.Tensor or _current_dispatch_mode() is not None:
        return op(*args)
    keys = torch._C._dispatch_keys(x) & torch._C._after_ADInplaceOrView_keyset
    return op.redispatch(keys, *args)


def backends() -> dict:
    """Which kernel serves each op on each device, plus how the extension was built.

    Returns ``{"ops": {op: {"cpu": ..., "cuda": ...}}, "build": build_info(), "triton": bool}``.
    """
    return {"ops": {k: dict(v) for k, v in _BACKENDS.items()}, "build": build_info(), "triton": HAS_TRITON}
