"""How many multiply-adds a core issues per second through each product instruction this CPU has:
the instruction peaks that bound the W8A8 kernels against float32's FMAs.

Each loop is written in LLVM IR and compiled for this CPU by llvmlite (numba's LLVM). It holds
`SUMS` independent accumulators, each fed one product per iteration of its own weight vector,
and passes the weights through an empty inline-asm statement every iteration: the compiler can
then neither merge two products (a probe whose products share their operands measures fewer of
them than it counts) nor hoist any out of the loop. The sums are checked against numpy after
each run, so a loop that skipped work would fail, not look fast. One thread; the best of `--reps`.

    python -m nanovllm.scripts.lab.isa_peaks

Rows: "avx2" is the AVX2 W8A8 kernel's product (`vpsignb`, `vpmaddubsw`, `vpmaddwd`, `vpaddd`:
32 int8 multiply-adds), built by the kernel's own `int8_dot.Multiply`; "avx2-unsigned" the same
without `vpsignb` (x taken as unsigned bytes); "vnni256" / "vnni512" are the VNNI kernels'
`vpdpbusd` (AVX-VNNI or AVX512-VNNI); "fma256"
/ "fma512" are float32 FMAs (8 / 16 multiply-adds) with enough sums to hide their latency;
"bf16dp512" is the bfloat16 kernel's `vdpbf16ps` (AVX512_BF16: 32 multiply-adds into float32).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from dataclasses import dataclass

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba.core.cgutils import get_or_insert_function

from nanovllm.model.kernels.bf16_dot import DOT as BF16_DOT
from nanovllm.model.kernels.bf16_dot import pair_type
from nanovllm.model.kernels.int8_dot import Multiply
from nanovllm.model.layers.linear import host_int8_kernel
from nanovllm.model.platform.cpu import BF16_KERNELS, INT8_KERNELS
from nanovllm.model.weights.quant import bf16_to_float32, bfloat16_bits

SUMS = 6     # int8 accumulators: with their weights, x and |x| they fill 15 of AVX2's 16 registers
FMA_SUMS = 10  # FMA's latency x its two ports: fewer sums would measure latency, not throughput
I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    needs: tuple[set[str], ...]  # any one of these feature sets
    lanes: int                         # int32 (or float32) lanes of a vector
    macs: int                          # multiply-adds of one product
    sums: int

    @property
    def floats(self) -> bool:
        """float32 FMAs (else int8 or bfloat16 products)."""
        return self.name.startswith("fma")

    @property
    def bf16(self) -> bool:
        """bfloat16 pairs into float32 lanes (`vdpbf16ps`)."""
        return self.name.startswith("bf16")


# The int8 probes need what the W8A8 kernel of the same product needs (`model/platform/cpu.py`).
PROBES = (
    Probe("avx2", INT8_KERNELS["avx2"], 8, 32, SUMS),
    Probe("avx2-unsigned", INT8_KERNELS["avx2"], 8, 32, SUMS),
    Probe("vnni256", INT8_KERNELS["avxvnni"], 8, 32, SUMS),
    Probe("vnni512", INT8_KERNELS["avx512vnni"], 16, 64, SUMS),
    Probe("fma256", ({"fma"},), 8, 8, FMA_SUMS),
    Probe("fma512", ({"avx512f"},), 16, 16, FMA_SUMS),
    Probe("bf16dp512", BF16_KERNELS["avx512bf16"], 16, 32, FMA_SUMS),
)


def host_features() -> set[str]:
    return {name for name, on in llvm.get_host_cpu_features().items() if on}


def runnable(probe: Probe, features: set[str]) -> bool:
    return any(needs <= features for needs in probe.needs)


def build(probe: Probe) -> ir.Module:
    """`void probe(i64 n, ptr w, ptr x, ptr out)`: `sums` accumulators (i32 or float32 lanes),
    each adding one product of its weight vector w[i] and the broadcast x per iteration, n
    iterations; the sums are stored to out [sums, lanes]."""
    module = ir.Module(name=probe.name)
    acc_t = ir.VectorType(F32 if probe.floats or probe.bf16 else I32, probe.lanes)
    w_t = acc_t if probe.floats else ir.VectorType(I8, probe.lanes * 4)  # (bf16: 2 x 2 bytes)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, w_t.as_pointer(),
                                                              w_t.as_pointer(),
                                                              acc_t.as_pointer()]), "probe")
    n, w_ptr, x_ptr, out_ptr = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    weights = [b.load(b.gep(w_ptr, [ir.Constant(I32, i)]), align=1) for i in range(probe.sums)]
    x = b.load(x_ptr, align=1)
    mul = None if probe.floats or probe.bf16 else Multiply(KERNEL_ISAS[probe.name], b)
    if probe.name == "avx2":
        x = mul.prepare_x(x)  # (x, |x|), once: the kernel makes |x| once per row and group too
    entry, loop, done = b.block, fn.append_basic_block("loop"), fn.append_basic_block("done")
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(I64)
    i.add_incoming(ir.Constant(I64, 0), entry)
    accs = [b.phi(acc_t) for _ in range(probe.sums)]
    for acc in accs:
        acc.add_incoming(ir.Constant(acc_t, None), entry)
    opaque = ir.InlineAsm(ir.FunctionType(w_t, [w_t]), "", "=v,0", side_effect=True)
    new = [product(b, probe, mul, acc, b.call(opaque, [w]), x)
           for acc, w in zip(accs, weights, strict=True)]
    for acc, value in zip(accs, new, strict=True):
        acc.add_incoming(value, loop)
    i_next = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(i_next, loop)
    b.cbranch(b.icmp_signed("<", i_next, n), loop, done)
    b.position_at_end(done)
    for k, value in enumerate(new):
        b.store(value, b.gep(out_ptr, [ir.Constant(I32, k)]), align=1)
    b.ret_void()
    return module


# The W8A8 kernel ISA whose product (`int8_dot.Multiply`) each int8 probe runs.
KERNEL_ISAS = {"avx2": "avx2", "avx2-unsigned": "avx2", "vnni256": "avxvnni",
               "vnni512": "avx512vnni"}


def product(b: ir.IRBuilder, probe: Probe, mul: Multiply | None, acc, w, x):
    """acc plus one product of w and x: the kernel's own instructions (`mul`), or, for
    "avx2-unsigned", its pairs and quads without the sign, or a float32 FMA."""
    if probe.floats:
        fma = get_or_insert_function(b.module, ir.FunctionType(acc.type, [acc.type] * 3),
                                     f"llvm.fma.v{probe.lanes}f32")
        return b.call(fma, [x, w, acc])
    if probe.bf16:
        pairs = pair_type()
        dot = get_or_insert_function(b.module, ir.FunctionType(acc.type, [acc.type, pairs,
                                                                          pairs]), BF16_DOT)
        return b.call(dot, [acc, b.bitcast(x, pairs), b.bitcast(w, pairs)])
    if probe.name != "avx2-unsigned":
        return mul.add(acc, x, w)
    ones = ir.Constant(mul.words, [1] * mul.words.count)
    return b.add(acc, b.call(mul.quads, [b.call(mul.pairs, [x, w]), ones]))


def reference(probe: Probe, n: int, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What the loop's sums should be after n iterations, in numpy."""
    if probe.floats:
        return (n * (x * w)).astype(np.float32)
    if probe.bf16:
        xf, wf = (bf16_to_float32(a.view(np.uint16)).reshape(-1, probe.lanes, 2) for a in (x, w))
        return (n * (xf * wf).sum(-1)).reshape(probe.sums, probe.lanes).astype(np.float32)
    xs = (x if probe.name == "avx2" else x.view(np.uint8)).astype(np.int64)  # else unsigned
    per = (xs * w.astype(np.int64)).reshape(probe.sums, probe.lanes, 4).sum(-1)
    return (n * per).astype(np.int32)


class Compiled:
    """The probes this CPU can run, compiled for it."""

    def __init__(self):
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        self.features = host_features()
        self.engines = []
        self.functions = {}

    def function(self, probe: Probe):
        """`probe`'s loop as a ctypes function, compiled once."""
        if probe.name not in self.functions:
            self.functions[probe.name] = self._compile(probe)
        return self.functions[probe.name]

    def _compile(self, probe: Probe):
        # A machine per engine: the engine owns it (sharing one freed it twice at exit).
        machine = llvm.Target.from_default_triple().create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=",".join(f"+{f}" for f in self.features),
            opt=2)
        module = llvm.parse_assembly(str(build(probe)))
        module.triple = machine.triple
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.finalize_object()
        self.engines.append(engine)  # keeps the code alive
        addr = engine.get_function_address("probe")
        return ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_void_p)(addr)


def operands(probe: Probe, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Weights [sums, vector] and one x vector: small integers (exact in float32 too)."""
    if probe.floats:
        w = rng.integers(-4, 5, (probe.sums, probe.lanes)).astype(np.float32)
        return w, rng.integers(-4, 5, probe.lanes).astype(np.float32)
    if probe.bf16:  # (bfloat16 bits, a pair of x repeated in every lane)
        w = bfloat16_bits(rng.integers(-4, 5, (probe.sums, probe.lanes * 2)).astype(np.float32))
        return w.view(np.int8), np.tile(bfloat16_bits(rng.integers(-4, 5, 2).astype(
            np.float32)), probe.lanes).view(np.int8)
    w = rng.integers(-127, 128, (probe.sums, probe.lanes * 4), dtype=np.int8)
    low = -127 if probe.name == "avx2" else 0  # x taken as unsigned stays below 128 (7 bits)
    word = rng.integers(low, 128, 4, dtype=np.int8)
    return w, np.tile(word, probe.lanes)


def run(fn, probe: Probe, n: int, w: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray]:
    out = np.zeros((probe.sums, probe.lanes),
                   np.float32 if probe.floats or probe.bf16 else np.int32)
    start = time.perf_counter()
    fn(n, w.ctypes.data, x.ctypes.data, out.ctypes.data)
    return time.perf_counter() - start, out


def measure(compiled: Compiled, probe: Probe, reps: int, seconds: float) -> float:
    """G multiply-adds/s of `probe` on one thread (best of reps), after checking its sums."""
    fn = compiled.function(probe)
    w, x = operands(probe, np.random.default_rng(0))
    _, out = run(fn, probe, 1000, w, x)
    if not np.array_equal(out, reference(probe, 1000, w, x)):
        raise AssertionError(f"{probe.name}: the loop's sums differ from numpy's")
    n = 1 << 16
    while run(fn, probe, n, w, x)[0] < seconds / 4:
        n *= 2
    best = min(run(fn, probe, n, w, x)[0] for _ in range(reps))
    return n * probe.sums * probe.macs / best / 1e9


# The probe of each W8A8 kernel's product (`model/kernels/int8_gemm.py`); avx512bw and portable have
# none.
KERNEL_PROBES = {isa: name for name, isa in KERNEL_ISAS.items() if name != "avx2-unsigned"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.2, help="about how long one run lasts")
    args = parser.parse_args(argv)
    compiled = Compiled()
    print(f"CPU: {llvm.get_host_cpu_name()}; one thread, best of {args.reps}")
    rates = {p.name: measure(compiled, p, args.reps, args.seconds)
             for p in PROBES if runnable(p, compiled.features)}
    base = rates.get("fma512") or rates.get("fma256")
    for probe in PROBES:
        rate = rates.get(probe.name)
        if rate is None:
            print(f"{probe.name:>14}: not on this CPU")
            continue
        ratio = f"  {rate / base:.2f}x float32's widest FMAs" if base else ""
        print(f"{probe.name:>14}: {rate:7.1f} G multiply-adds/s{ratio}")
    kernel = host_int8_kernel()
    if base and (probe := KERNEL_PROBES.get(kernel)) in rates:
        # Where multiply-adds bind (batch 64, prefill), no int8 / float32 ratio can pass this.
        print(f"this CPU's W8A8 kernel: {kernel} ({probe}), at most "
              f"{rates[probe] / base:.2f}x float32 where multiply-adds bind")
    if base and "bf16dp512" in rates:
        print(f"this CPU's bfloat16 kernel: avx512bf16 (bf16dp512), at most "
              f"{rates['bf16dp512'] / base:.2f}x float32 where multiply-adds bind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
