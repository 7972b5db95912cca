"""The shapes of the vector kernels: the block width, and the vector width they are tuned for.

``BLOCK`` samples are swept together, one per lane of a node's row. Between the
caller's sample-major rows and the node-major scratch buffer the samples move in
square tiles of one machine vector per row (:func:`vector_bytes` bytes: 16 float32
lanes with AVX-512, 8 with AVX2, 4 with SSE or NEON), transposed in registers;
the chain kernels scan their rows in tiles of one vector too. A tile of wider
vectors than the machine has does not fit its registers: on AVX2, tiles of 16
float32 lanes (two ymm registers per row) spilled to the stack and took 1.5-2x
the time to move the samples in and out of the buffer.

The width is read once, at import, from the code generator that compiles the
kernels: it follows ``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES`` where they
are set, as the compiled code does. Numba's kernel cache is keyed by the same CPU
name and features, so code tuned for one width is never served to a machine of
another.
"""

from __future__ import annotations

import functools

BLOCK = 32


# a 16-lane float32 add, in typed-pointer IR (older LLVMs) and opaque-pointer IR (newer ones)
_PROBES = tuple(
    f"""
define void @emdtree_probe({ptr} %p) {{
  %v = load <16 x float>, {ptr} %p
  %w = fadd <16 x float> %v, %v
  store <16 x float> %w, {ptr} %p
  ret void
}}
"""
    for ptr in ("<16 x float>*", "ptr")
)


def _width_of_assembly(asm: str) -> int:
    """Vector bytes that a 16-lane float32 add was compiled to, from its x86 assembly."""
    if "zmm" in asm:
        return 64
    if "ymm" in asm:
        return 32
    return 16


@functools.lru_cache(maxsize=1)
def _detect() -> tuple[int, str, str]:
    """``(bytes, cpu name, architecture)``: the widest vector register that Numba's code
    generator uses for a 16-lane float32 add, for the CPU it compiles for."""
    try:
        import llvmlite.binding as ll
        from numba.core.registry import cpu_target

        codegen = cpu_target.target_context.codegen()
        triple, cpu_name = codegen.magic_tuple()[:2]
        arch = triple.split("-")[0]
        if arch not in ("x86_64", "i386", "i686"):
            # NEON (and SVE, whose fixed-width vectors LLVM lowers to NEON), POWER VSX: 128 bits
            return 16, cpu_name, arch
        for probe in _PROBES:
            try:
                module = ll.parse_assembly(probe)
            except RuntimeError:  # this LLVM reads the other pointer syntax
                continue
            module.triple = triple
            return _width_of_assembly(codegen._tm.emit_assembly(module)), cpu_name, arch
        return 16, cpu_name, arch
    except Exception as exc:  # an unexpected Numba: the tile that suits every x86 and ARM
        return 16, f"unknown ({type(exc).__name__})", "unknown"


def vector_bytes() -> int:
    """Bytes of the vector registers that emdtree's CPU kernels are compiled for.

    64 where the compiled code uses AVX-512, 32 for AVX and AVX2, 16 otherwise
    (SSE, ARM NEON and SVE, others). Read once from Numba's code generator, so it
    follows ``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES``.

    Returns
    -------
    int
        64, 32 or 16.

    Examples
    --------
    >>> from emdtree.kernels import lanes
    >>> lanes.vector_bytes() in (16, 32, 64)
    True
    """
    return _detect()[0]


def vector_isa() -> str:
    """The vector registers the kernels are compiled for, in words, with the CPU name
    Numba compiles for: ``"AVX-512 (512-bit vectors), cpu sapphirerapids"``.

    Returns
    -------
    str
        One line for a benchmark's or ``emdtree info``'s report.

    Examples
    --------
    >>> from emdtree.kernels import lanes
    >>> "bit" in lanes.vector_isa()
    True
    """
    width, cpu_name, arch = _detect()
    if arch in ("x86_64", "i386", "i686"):
        name = {64: "AVX-512", 32: "AVX2", 16: "SSE"}[width]
    elif arch in ("aarch64", "arm64"):
        name = "NEON"
    else:
        name = arch
    return f"{name} ({8 * width}-bit vectors), cpu {cpu_name}"


VECTOR_BYTES = vector_bytes()

# The chain kernels scan at most 256 bits at a time: with AVX-512 the 512-bit scan
# measured 10-15% slower per call (1000-bin chain, batch 512, float32) than the
# same kernel with 256-bit tiles, which it keeps on every x86 CPU.
CHAIN_BYTES = min(VECTOR_BYTES, 32)
"""Bytes of one tile row: :func:`vector_bytes` at import."""
