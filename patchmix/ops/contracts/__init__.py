"""Each op's contract, in one leaf module per op: schema strings, supported dtypes, argument checks, the
memory-format rule and the data ranges. The op modules (``patchmix.ops.<op>``, registration, reference,
autograd) and the Triton kernels (``patchmix._kernels.<op>``) both import them; a contract imports nothing of
the package but these helpers, so kernels depend only downward."""
