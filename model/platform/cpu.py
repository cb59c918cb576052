"""Which vector instructions the compiled kernels run on: `kernel_path()`, read at start-up.

numba compiles every kernel for the CPU it runs on (LLVM's name for it and its feature flags),
so the same source becomes AVX-512, AVX2 + FMA or baseline SSE2 code: the loops in
`model/layers/linear.py` widen int8 and bfloat16 weights in vector registers on any of them. The
machines this runs on differ from day to day, so nothing here is assumed: the features come
from llvmlite (what LLVM will emit code for), or from numba's own override.

`NUMBA_CPU_NAME=generic` (numba's variable, read when numba starts) forces the portable path:
baseline x86-64 code that runs wherever numba runs. Its compiled kernels are cached apart from
the host's.

The W8A8 kernels (`model/kernels/int8_gemm.py`) call integer dot-product instructions through LLVM
intrinsics, so they need the CPU to have them: `int8_kernels` lists those this CPU can run,
best first, and the path uses the first (the portable one on a generic CPU); the kernels for
block-quantized weights (`model/kernels/block_gemm.py`) are chosen the same way, AMX's tiles
for many rows where the CPU has them. bfloat16 weights are multiplied by AVX512_BF16's
`vdpbf16ps` where the CPU has it (`model/kernels/bf16_dot.py`), else widened to float32
(`model/layers/linear.py`): `bf16_kernels` lists the choices the same way. With the
instruction, bfloat16 models' prefill attention multiplies in bfloat16 too
(`model/kernels/bf16_attention.py`); elsewhere it stays float32.
"""

from __future__ import annotations

from dataclasses import dataclass

# LLVM's feature names, in the order a description lists them.
VECTOR_FEATURES = ("sse4.1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                   "avx512vnni", "avxvnni", "avx512bf16", "amx-tile", "amx-bf16")
# The W8A8 kernels, best first, with the features each needs (any one of the sets).
INT8_KERNELS = {
    "avx512vnni": ({"avx512f", "avx512bw", "avx512vnni"},),
    "avxvnni": ({"avx2", "avxvnni"}, {"avx2", "avx512vl", "avx512vnni"}),
    "avx512bw": ({"avx512f", "avx512bw"},),
    "avx2": ({"avx2"},),
    "portable": (set(),),
}

# The kernels for block-quantized weights (`model/kernels/block_gemm.py`), best first, the same way: F16C
# widens their float16 scales; AVX-512's takes 32-byte vectors too (VL) for one row of K-quants.
# "amx" multiplies many rows on AMX's bfloat16 tiles (`model/kernels/block_amx.py`) and fewer
# on the next kernel here that the CPU runs.
BLOCK_KERNELS = {
    "amx": ({"avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512bf16", "amx-tile",
             "amx-bf16"},),
    "avx512vnni": ({"avx512f", "avx512bw", "avx512vl", "avx512vnni"},),
    "avxvnni": ({"avx2", "f16c", "avxvnni"}, {"avx2", "f16c", "avx512vl", "avx512vnni"}),
    "avx2": ({"avx2", "f16c"},),
    "portable": (set(),),
}


# The bfloat16 kernels, best first, the same way: bfloat16 x bfloat16 dot products, or each
# weight widened to float32.
BF16_KERNELS = {
    "avx512bf16": ({"avx512f", "avx512bf16"},),
    "widen": (set(),),
}

# LLVM's names of AMD's CPUs. A one-row product asks for the weight lines ahead of those it
# reads (`block_dot.ONE_ROW_LEAD`): non-temporally on these, into L2 on the others. Intel's cores
# take a non-temporal request into L1 alone, whose few miss buffers then cap a core at half the
# memory's speed (Xeon, Emerald Rapids); AMD's read slower with requests into L2 (Zen 5).
AMD_CPUS = ("znver", "bdver", "btver", "amdfam")


def int8_kernels(features: set[str] | frozenset[str]) -> list[str]:
    """The W8A8 kernels code compiled with `features` can run, best first."""
    return runnable(INT8_KERNELS, features)


def block_kernels(features: set[str] | frozenset[str]) -> list[str]:
    """The block-quantized kernels code compiled with `features` can run, best first."""
    return runnable(BLOCK_KERNELS, features)


def bf16_kernels(features: set[str] | frozenset[str]) -> list[str]:
    """The bfloat16 kernels code compiled with `features` can run, best first."""
    return runnable(BF16_KERNELS, features)


def runnable(kernels: dict[str, tuple[set[str], ...]], features) -> list[str]:
    return [name for name, needs in kernels.items() if any(n <= features for n in needs)]


@dataclass(frozen=True, slots=True)
class KernelPath:
    name: str                 # "avx512", "avx2", "avx", "sse4.1" or "generic"
    cpu: str                  # the CPU LLVM compiles for
    features: frozenset[str]  # of VECTOR_FEATURES, those it may use

    @property
    def int8(self) -> str:
        """The W8A8 kernel this path runs (`model/kernels/int8_gemm.py`)."""
        return int8_kernels(self.features)[0]

    @property
    def block(self) -> str:
        """The kernel for block-quantized weights this path runs (`model/kernels/block_gemm.py`;
        "amx": on few rows the next of `block_kernels`)."""
        return block_kernels(self.features)[0]

    @property
    def bf16(self) -> str:
        """The bfloat16 kernel this path runs (`model/kernels/bf16_dot.py`, or "widen")."""
        return bf16_kernels(self.features)[0]

    @property
    def read_ahead(self) -> str:
        """How one-row block products ask for the weight lines ahead: "non-temporally" on AMD's
        CPUs, "into L2" on the others (`AMD_CPUS`)."""
        return "non-temporally" if self.cpu.startswith(AMD_CPUS) else "into L2"

    @property
    def bf16_uses(self) -> str:
        """What runs on the bfloat16 kernel: bfloat16 models' linear layers, and their prefill
        attention's products where it is the instruction's (`model/kernels/bf16_attention.py`)."""
        return "linear layers" if self.bf16 == "widen" else "linear layers, prefill attention"

    def describe(self) -> str:
        """One line for the log and the benchmark."""
        has = " ".join(f for f in VECTOR_FEATURES if f in self.features) or "none beyond SSE2"
        ahead = "" if self.block == "portable" else f" (one row reads ahead {self.read_ahead})"
        block = self.block
        if block == "amx":
            block = f"amx for many rows, {block_kernels(self.features)[1]} for few"
        return (f"kernels: {self.name} path (numba compiles for {self.cpu}: {has}); "
                f"int8 dot products: {self.int8}; block-quantized: {block}{ahead}; "
                f"bfloat16 dot products: {self.bf16} ({self.bf16_uses})")


def path_for(cpu: str, features: set[str] | frozenset[str]) -> KernelPath:
    """The path code compiled for `cpu` with `features` takes."""
    features = frozenset(f for f in features if f in VECTOR_FEATURES)
    if cpu == "generic":
        name = "generic"
    else:
        name = next((f for f in ("avx512f", "avx2", "avx", "sse4.1") if f in features), "generic")
    return KernelPath(name.removesuffix("f") if name == "avx512f" else name, cpu, features)


def kernel_path() -> KernelPath:
    """The path of this process's kernels: the host CPU, or numba's NUMBA_CPU_NAME /
    NUMBA_CPU_FEATURES override."""
    import llvmlite.binding as llvm
    from numba.core import config

    if config.CPU_NAME:
        features = {f[1:] for f in (config.CPU_FEATURES or "").split(",") if f.startswith("+")}
        return path_for(config.CPU_NAME, features)
    host = llvm.get_host_cpu_features()
    return path_for(llvm.get_host_cpu_name(), {name for name, on in host.items() if on})
