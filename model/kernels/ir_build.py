"""What the kernels written as LLVM IR (`f32_dot`, `int8_dot`, `bf16_dot`, `attention_dot`)
share, so that each of them spells out only its own operands, step and store.

- `emit_accumulating_loop`: `for i in range(count)` carrying a register tile's accumulators
  from step to step as phi values, and their values after the loop.
- `emit_tile_loop`: the loop of a register tile that broadcasts one scalar of each row against
  a few loaded vectors (`f32_dot`, `int8_dot`, `bf16_dot`): each kernel gives only how it loads,
  broadcasts and multiplies.
- `emit_store_rows`: a tile's rows of vectors stored, each from its own address.
- `emit_splat`: one scalar repeated across every lane of a vector (a broadcast operand).
- `emit_store_vectors`: vectors stored one after another from an address.
- `declare`: an LLVM intrinsic, declared in the module being built.
- `intrinsic_accepts`: whether this LLVM takes an intrinsic with given operand types (LLVM
  changes some intrinsics' signatures between versions).

numba's on-disk cache does not notice edits to this module in the kernels that use it: after
changing it, delete `model/*/__pycache__/*.nbi` and `*.nbc`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import llvmlite.binding as llvm
from llvmlite import ir
from numba.core import cgutils

I32 = ir.IntType(32)


def emit_accumulating_loop(builder: ir.IRBuilder, name: str, count: ir.Value,
                           starts: Sequence[ir.Value],
                           step: Callable[[ir.Value, list[ir.Value]], list[ir.Value]]
                           ) -> list[ir.Value]:
    """Emits `for i in range(count)` (count an integer value) whose accumulators begin as
    `starts`: step(i, accumulators) emits the loop's body and returns the accumulators' next
    values. Returns their values after the loop (`starts` where count <= 0), with the builder
    placed after it. `name` names the loop's blocks in the IR."""
    zero = ir.Constant(count.type, 0)
    entry = builder.block
    loop = builder.append_basic_block(f"{name}_loop")
    done = builder.append_basic_block(f"{name}_done")
    builder.cbranch(builder.icmp_signed(">", count, zero), loop, done)

    builder.position_at_end(loop)
    i = builder.phi(count.type)
    i.add_incoming(zero, entry)
    accs = [builder.phi(start.type) for start in starts]
    for acc, start in zip(accs, starts):
        acc.add_incoming(start, entry)
    nexts = step(i, accs)
    latch = builder.block  # (where the body ends, should it have branched)
    i_next = builder.add(i, ir.Constant(count.type, 1))
    i.add_incoming(i_next, latch)
    for acc, value in zip(accs, nexts, strict=True):
        acc.add_incoming(value, latch)
    builder.cbranch(builder.icmp_signed("<", i_next, count), loop, done)

    builder.position_at_end(done)
    finals = []
    for start, value in zip(starts, nexts):
        finals.append(builder.phi(start.type))
        finals[-1].add_incoming(start, entry)
        finals[-1].add_incoming(value, latch)
    return finals


def emit_tile_loop(builder: ir.IRBuilder, name: str, count: ir.Value, rows: int, vectors: int,
                   zero: ir.Value, load_vector: Callable[[ir.Value, int], ir.Value],
                   broadcast_row: Callable[[ir.Value, int], ir.Value],
                   multiply_add: Callable[[ir.Value, ir.Value, ir.Value], ir.Value]
                   ) -> list[list[ir.Value]]:
    """A register tile's loop, `for k in range(count)`: at step k, the `vectors` operands
    v[u] = load_vector(k, u), then for each of `rows` rows its operand x = broadcast_row(k, i)
    multiplied into the accumulators of that row, acc[i][u] = multiply_add(acc[i][u], x, v[u]).
    Every accumulator starts as `zero`; returns their values after the loop, [rows][vectors]."""
    def step(k, accs):
        vs = [load_vector(k, u) for u in range(vectors)]
        sums = []
        for i in range(rows):
            x = broadcast_row(k, i)
            sums += [multiply_add(accs[i * vectors + u], x, vs[u]) for u in range(vectors)]
        return sums

    finals = emit_accumulating_loop(builder, name, count, [zero] * (rows * vectors), step)
    return [finals[i * vectors:(i + 1) * vectors] for i in range(rows)]


def emit_store_rows(builder: ir.IRBuilder, rows: Sequence[Sequence[ir.Value]], address: ir.Value,
                    row_stride: ir.Value, vector_bytes: int) -> None:
    """Row i's vectors stored one after another from byte address `address` + i * row_stride."""
    for i, vectors in enumerate(rows):
        at = builder.add(address, builder.mul(row_stride, ir.Constant(row_stride.type, i)))
        emit_store_vectors(builder, vectors, at, vector_bytes)


def emit_splat(builder: ir.IRBuilder, scalar: ir.Value, vector: ir.VectorType) -> ir.Value:
    """`scalar` in every lane of a vector of type `vector` (whose elements are its type)."""
    one = builder.insert_element(ir.Constant(vector, None), scalar, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(I32, vector.count),
                                                        [0] * vector.count))


def emit_store_vectors(builder: ir.IRBuilder, vectors: Sequence[ir.Value], address: ir.Value,
                       vector_bytes: int) -> None:
    """Stores vectors[n] at byte address `address` + n * vector_bytes (aligned to 4 bytes)."""
    for n, vector in enumerate(vectors):
        at = builder.add(address, ir.Constant(address.type, n * vector_bytes))
        builder.store(vector, builder.inttoptr(at, vector.type.as_pointer()), align=4)


def declare(builder: ir.IRBuilder, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    """The intrinsic `name` as a function ret(args) of the module `builder` builds."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def intrinsic_accepts(name: str, ret: ir.Type, args: list[ir.Type]) -> bool:
    """Whether this LLVM accepts a module calling intrinsic `name` as ret(args), verified by
    LLVM itself."""
    module = ir.Module("probe")
    signature = ir.FunctionType(ret, args)
    intrinsic = ir.Function(module, signature, name)
    probe = ir.Function(module, signature, "probe")
    builder = ir.IRBuilder(probe.append_basic_block())
    builder.ret(builder.call(intrinsic, list(probe.args)))
    try:
        llvm.parse_assembly(str(module)).verify()
    except RuntimeError:  # "Intrinsic has incorrect argument type!"
        return False
    return True
