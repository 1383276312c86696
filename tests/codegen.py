"""Ahead-of-time codegen audit of the Triton kernels, without a GPU (used by ``tests/test_codegen.py`` and
``bench/bench_codegen.py``).

1. **Record** what a real launch would get: the host launchers run under ``TRITON_INTERPRET=1`` on ``meta``
   tensors (any host read of device data raises there) with the interpreter's launch replaced by a recorder
   (``record_launches``): kernel, arguments (dtype and 16-byte alignment of each tensor, ints, floats) and the
   constexprs the launcher picked, at the benchmark shapes.
2. **Compile** each recorded launch for sm_80 and sm_90 in a subprocess without ``TRITON_INTERPRET``
   (``compile_launches``), through Triton's own binder, so the specialisation (16-divisible pointers and
   ints, ints equal to 1 as constexprs, fp64 annotations) is exactly what the launch would get, then read the
   results: registers and local memory (``cuobjdump -res-usage``), the widest global load and store in the
   PTX, software integer divisions in the PTX (``div``/``rem`` on integers), and the static SASS instruction
   count (``cuobjdump -sass``).

``python -m tests.codegen`` (reads launches as JSON on stdin, writes rows as JSON) is the subprocess.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHS = (80, 90)


@dataclass
class Launch:
    """One recorded launch: ``kernel`` as ``module:name``, its arguments, and a label (op, shape)."""

    kernel: str
    args: list
    kwargs: dict
    grid: list
    label: str = ""


def _describe(value):
    import torch
    import triton.language as tl

    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).replace("torch.", ""), "aligned": value.data_ptr() % 16 == 0}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": value}
    if isinstance(value, tl.dtype):
        return {"tl_dtype": str(value)}
    if isinstance(value, tl.constexpr):
        return _describe(value.value)
    raise TypeError(f"cannot record a kernel argument of type {type(value).__name__}")


@contextlib.contextmanager
def record_launches(run: bool = False):
    """Record every interpreted Triton launch made inside the block (``run=False``: record only, so the
    launchers may be given ``meta`` tensors). Yields the list of :class:`Launch`."""
    from triton.runtime.interpreter import InterpretedFunction

    launches: list[Launch] = []
    real = InterpretedFunction.run

    def recording(self, *args, grid, warmup, **kwargs):
        names = list(self.arg_names)
        pos = [_describe(a) for a in args]
        kw = {k: _describe(v) for k, v in kwargs.items() if k in names}
        opts = {k: v for k, v in kwargs.items() if k not in names}
        g = grid(dict(zip(names, args, strict=False))) if callable(grid) else grid
        launches.append(Launch(f"{self.fn.__module__}:{self.fn.__name__}", pos, {**kw, **opts}, list(g)))
        if run:
            return real(self, *args, grid=grid, warmup=warmup, **kwargs)
        return None

    InterpretedFunction.run = recording
    try:
        yield launches
    finally:
        InterpretedFunction.run = real


# --------------------------------------------------------------------------------------------------
# compile and measure (subprocess, no interpreter)
# --------------------------------------------------------------------------------------------------


def _tools():
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


class _FakeTensor:
    """What Triton's binder needs of a tensor argument: its dtype and the alignment of its address."""

    def __init__(self, dtype, aligned: bool):
        self.dtype = dtype
        self._ptr = 0 if aligned else 8

    def data_ptr(self):
        return self._ptr


def _rebuild(d):
    import torch
    import triton.language as tl

    if "tensor" in d:
        return _FakeTensor(getattr(torch, d["tensor"]), d["aligned"])
    if "tl_dtype" in d:
        return tl.str_to_ty(d["tl_dtype"], None) if hasattr(tl, "str_to_ty") else getattr(tl, d["tl_dtype"])
    return next(iter(d.values()))


def _vector_bits(ptx: str, op: str, element_bits: int) -> int:
    """Widest ``op`` (``ld.global`` or ``st.global``) of ``element_bits``-bit elements, in bits (vector count
    times element bits): the data path's accesses, not those of indices or masks."""
    best = 0
    for m in re.finditer(rf"\b{op}(?:\.[a-z0-9:]+)*?(?:\.v(\d))?\.[bsuf](\d+)\b", ptx):
        if int(m.group(2)) == element_bits:
            best = max(best, int(m.group(1) or 1) * element_bits)
    return best


def _compile_one(launch: dict, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    module, name = launch["kernel"].split(":")
    kernel = getattr(importlib.import_module(module), name)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    args = [_rebuild(a) for a in launch["args"]]
    names = {p.name for p in kernel.params}
    kwargs = {k: (_rebuild(v) if k in names else v) for k, v in launch["kwargs"].items()}
    bound, specialization, options = binder(*args, **kwargs)
    opts = {k: v for k, v in kwargs.items() if k not in names}
    options, signature, constexprs, attrs = kernel._pack_args(backend, opts, bound, specialization, options)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                              options=options.__dict__)
    ptx = compiled.asm["ptx"]
    data_bits = next(a.dtype.itemsize * 8 for a in args if isinstance(a, _FakeTensor))  # the first pointer: the data
    tools = _tools()
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        res = subprocess.run([tools / "cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tools / "cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    return {
        "kernel": name, "label": launch["label"], "arch": f"sm_{arch}",
        "registers": int(re.search(r"REG:(\d+)", res).group(1)),
        "spill_bytes": int(re.search(r"LOCAL:(\d+)", res).group(1)),
        "load_bits": _vector_bits(ptx, "ld.global", data_bits), "store_bits": _vector_bits(ptx, "st.global", data_bits),
        "int_divisions": len(re.findall(r"\b(?:div|rem)\.(?:s|u)(?:16|32|64)\b", ptx)),
        "sass_instructions": len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+\S", sass, re.M)),
        "num_warps": options.num_warps,
        "programs": int(math.prod(launch["grid"])),
    }


def compile_launches(launches: list[Launch], archs=ARCHS, timeout: float = 600) -> list[dict]:
    """Compile every launch for every arch in a subprocess without the interpreter; one row per pair."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is its default
    payload = json.dumps({"launches": [asdict(x) for x in launches], "archs": list(archs)})
    res = subprocess.run([sys.executable, "-m", "tests.codegen"], input=payload, capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"codegen subprocess failed:\n{res.stderr[-6000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """The audit table, one line per (kernel, shape, arch)."""
    head = (f"{'kernel':<40} {'shape':<36} {'arch':<5} {'grid':>6} {'warps':>5} {'regs':>4} {'spill B':>7} "
            f"{'ld bits':>7} {'st bits':>7} {'int div':>7} {'SASS':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['kernel']:<40} {r['label']:<36} {r['arch']:<5} {r['programs']:>6} {r['num_warps']:>5} "
                     f"{r['registers']:>4} {r['spill_bytes']:>7} {r['load_bits']:>7} {r['store_bits']:>7} "
                     f"{r['int_divisions']:>7} {r['sass_instructions']:>5}")
    lines.append("grid: programs launched; ld/st bits: the widest global load/store of the data's element type; "
                 "int div: software integer divisions in the PTX; SASS: static instruction count")
    return "\n".join(lines)


def main() -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    job = json.loads(sys.stdin.read())
    rows = [_compile_one(launch, arch) for launch in job["launches"] for arch in job["archs"]]
    print(json.dumps(rows))


if __name__ == "__main__":
    main()


LAST_ROWS: list[dict] = []  # the audit rows of this process's last run (printed in the terminal summary)
