"""Op registry: loads the compiled extension, defines every ``patchmix::*`` op once, and records
which kernel serves each op on each device.

Who owns what:

* The C++ sources in ``csrc/<op>.cpp`` define each schema (``TORCH_LIBRARY_FRAGMENT``) and register the
  CPU kernel ``<op>_cpu``, so that LibTorch programs linking the CMake build get working ops too.
* This module holds the same schema string; when ``patchmix._C`` is loaded it checks that the compiled
  schema equals it (a stale build is refused with a message), and when ``_C`` is missing it defines the
  op itself and registers the pure-PyTorch reference as the CPU kernel, announced once with a warning.
* The CUDA kernel is always the Triton launcher ``<op>_cuda`` from ``patchmix._kernels``, registered here
  with ``Library.impl``, never with ``wrap_triton``/``triton_op`` (they refuse interpreted kernels,
  pytorch issue 152868, and the tests run the launchers under ``TRITON_INTERPRET=1`` on the CPU).
  Without Triton the reference serves CUDA tensors and ``backends()`` says so.

Device dispatch is therefore done by PyTorch's dispatcher, never by ``x.is_cuda`` branches.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable

import torch

NAMESPACE = "patchmix"

_lib_def = torch.library.Library(NAMESPACE, "FRAGMENT")  # noqa: TOR901 - kept alive for the process
_lib_impl = torch.library.Library(NAMESPACE, "IMPL")  # noqa: TOR901

_BACKENDS: dict[str, dict[str, str]] = {}


def _load_extension():
    if os.environ.get("PATCHMIX_DISABLE_EXTENSION", "0") == "1":
        return None, "disabled by PATCHMIX_DISABLE_EXTENSION=1"
    try:
        return importlib.import_module("patchmix._C"), None
    except ImportError as exc:  # not built, or built against another torch
        return None, str(exc)


_C, _C_ERROR = _load_extension()
if _C is None:
    warnings.warn(
        "patchmix: the C++ extension patchmix._C is not available "
        f"({_C_ERROR}); CPU ops run the pure-PyTorch reference instead. "
        "Build it with `pip install --no-build-isolation -e .`.",
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
    """How ``patchmix._C`` was built (compiler, OpenMP threads, CUDA), or why it is absent."""
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
) -> torch._ops.OpOverloadPacket:
    """Define ``patchmix::<name>`` (or check the compiled definition) and register its kernels.

    ``schema`` is the part after the op name, e.g. ``"(Tensor x) -> Tensor"``.
    ``cuda_launcher`` names the host function in ``patchmix._kernels.<name>`` (``"<name>_cuda"``).
    Returns ``torch.ops.patchmix.<name>``.
    """
    qualname = f"{NAMESPACE}::{name}"
    expected = torch._C.parse_schema(qualname + schema)
    if _C is not None:
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
        cpu = "reference (PyTorch, extension not built)"

    cuda = "reference (PyTorch, Triton not installed)"
    if cuda_launcher is not None and HAS_TRITON:
        module = importlib.import_module(f"patchmix._kernels.{name}")
        _lib_impl.impl(name, getattr(module, cuda_launcher), "CUDA")
        cuda = f"Triton (patchmix._kernels.{name}.{cuda_launcher})"
    else:
        _lib_impl.impl(name, reference, "CUDA")
    _BACKENDS[name] = {"cpu": cpu, "cuda": cuda}
    return getattr(getattr(torch.ops, NAMESPACE), name)


def backends() -> dict:
    """Which kernel serves each op on each device, plus how the extension was built.

    Returns ``{"ops": {op: {"cpu": ..., "cuda": ...}}, "build": build_info(), "triton": bool}``.
    """
    return {"ops": {k: dict(v) for k, v in _BACKENDS.items()}, "build": build_info(), "triton": HAS_TRITON}
