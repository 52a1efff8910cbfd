"""ZeRO-1 on 8 simulated CPU devices: adamx's state split over the data axis while the
parameters stay replicated. Run by `test_zero.py` in its own process (the device count is fixed
when JAX starts):

    python tests/zero_check.py

Prints the state's layout, the compiled step's collectives and memory, and the runs' deviations;
exits non-zero on the first failed check.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import re
from collections import defaultdict
from typing import Any

import data_parallel as dp
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
from adamx._trees import path_str

STEPS = 20
# With global clipping, the norm's sum of squares is added up shard by shard and then across
# devices instead of leaf by leaf: the clip factor moves by a few ulps, and Adam, nearly
# invariant to a gradient's scale, carries almost none of it into the parameters. Measured
# 0 to 3e-8 over 20 steps; the bound leaves a factor of 30.
CLIPPED_ATOL = 1e-6
# On 8 devices the gradients themselves differ in the last bits (an all-reduce of per-device
# sums, and matrix products split differently, even with the whole batch on every device), and
# Adam's normalised steps carry the differences on: measured up to 4.7e-6 after 20 steps.
SPLIT_BATCH_ATOL = 1e-5


def state_bytes_per_device(state: Any) -> dict[Any, int]:
    """Bytes each device holds, counted from the arrays' addressable shards."""
    held: dict[Any, int] = defaultdict(int)
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            held[shard.device] += shard.data.nbytes
    return held


def check_memory(mesh: Mesh) -> None:
    tx = dp.make_tx(clip=True)
    (params_sharding, state_sharding, _), _ = dp.zero_layout(tx, mesh)
    params = jax.device_put(dp.init_params(0), params_sharding)
    state = jax.jit(tx.init, out_shardings=state_sharding)(params)
    print(adamx.sharding_report(state))
    whole = [
        (path_str(path), leaf.nbytes)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if leaf.sharding.is_fully_replicated
    ]
    replicated_total = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    whole_total = sum(nbytes for _, nbytes in whole)
    bound = (replicated_total - whole_total) / 8 + whole_total
    held = state_bytes_per_device(state)
    print(
        f"--- state bytes per device: replicated {replicated_total}, ZeRO at most "
        f"{max(held.values())} (bound {bound:.0f} = 1/8 of the split leaves + {whole_total} in "
        f"{len(whole)} leaves left whole: {', '.join(p for p, _ in whole)})"
    )
    assert len(held) == 8 and max(held.values()) <= bound, held
    assert max(held.values()) < replicated_total / 6, held


def collectives(hlo: str) -> dict[str, list[int]]:
    """Bytes of each collective's result in a compiled module's text, by kind."""
    found: dict[str, list[int]] = defaultdict(list)
    sizes = {"f32": 4, "s32": 4, "bf16": 2, "pred": 1}
    for line in hlo.splitlines():
        match = re.search(
            r"= (.*?) (all-reduce|all-gather|reduce-scatter|all-to-all)(-start)?\(", line
        )
        if match:
            shapes = re.findall(r"(f32|s32|bf16|pred)\[([\d,]*)\]", match.group(1))
            nbytes = sum(
                sizes[t] * int(np.prod([int(d) for d in dims.split(",") if d]))
                for t, dims in shapes
            )
            found[match.group(2)].append(nbytes)
    return found


def compiled_step(tx: Any, mesh: Mesh, zero: bool) -> Any:
    (params_sharding, state_sharding, loss_sharding), batch = dp.zero_layout(tx, mesh)
    if not zero:
        state_sharding = jax.tree.map(lambda _: NamedSharding(mesh, P()), state_sharding)
    shapes = jax.eval_shape(lambda: (dp.init_params(0), dp.batches(0, 1)[0]))
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes[0],
        params_sharding,
    )
    state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(tx.init, params),
        state_sharding,
    )
    tokens = jax.ShapeDtypeStruct(shapes[1].shape, shapes[1].dtype, sharding=batch)
    step = dp.make_step(tx, (params_sharding, state_sharding, loss_sharding))
    return step.lower(params, state, tokens).compile()


def check_compiled(mesh: Mesh) -> None:
    """The step reduces the gradients, updates shards, and gathers only the new parameters; its
    memory per device drops by at least three quarters of the replicated state."""
    params_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(dp.init_params(0)))
    for clip in (False, True):
        tx = dp.make_tx(clip)
        state_bytes = sum(
            leaf.size * leaf.dtype.itemsize
            for leaf in jax.tree.leaves(jax.eval_shape(tx.init, dp.init_params(0)))
        )
        memory = {}
        for zero in (False, True):
            compiled = compiled_step(tx, mesh, zero)
            found = collectives(compiled.as_text())
            analysis = compiled.memory_analysis()
            memory[zero] = analysis.argument_size_in_bytes + analysis.temp_size_in_bytes
            print(
                f"--- compiled step, clipping {clip}, {'ZeRO' if zero else 'replicated'} state: "
                f"arguments + temporaries {memory[zero]} bytes per device; collectives "
                + ", ".join(f"{k} x{len(v)} ({sum(v)} bytes)" for k, v in sorted(found.items()))
            )
        assert sum(found["all-gather"]) <= params_bytes, found  # the parameters, once
        assert memory[False] - memory[True] >= 0.75 * state_bytes, (memory, state_bytes)


def train(tx: Any, mesh: Mesh | None, zero: bool) -> tuple[Any, list[float], list[Any]]:
    """Parameters and EMA after `STEPS` steps on one device, or with the batch split over
    `mesh`; the losses; the gradients of each step (on one device)."""
    params, tokens = dp.init_params(0), dp.batches(1, STEPS)
    if mesh is None:
        step, state = dp.make_step(tx), tx.init(jax.device_put(params))
    else:
        (params_sharding, state_sharding, loss_sharding), batch = dp.zero_layout(tx, mesh)
        if not zero:
            state_sharding = jax.tree.map(lambda _: NamedSharding(mesh, P()), state_sharding)
        params = jax.device_put(params, params_sharding)
        state = jax.jit(tx.init, out_shardings=state_sharding)(params)
        step = dp.make_step(tx, (params_sharding, state_sharding, loss_sharding))
        tokens = jax.device_put(tokens, NamedSharding(mesh, P(None, *batch.spec)))
    losses, grads = [], []
    for i in range(STEPS):
        if mesh is None:
            grads.append(jax.grad(dp.loss_fn)(params, tokens[i]))
        params, state, loss = step(params, state, tokens[i])
        losses.append(float(loss))
    return (params, adamx.ema_params(state)), losses, grads


def max_deviation(a: Any, b: Any) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def replay(tx: Any, grads: list[Any], mesh: Mesh | None) -> Any:
    """Parameters and EMA after applying `grads`, on one device or with ZeRO state on `mesh`."""
    params = dp.init_params(0)

    def step(params: Any, state: Any, g: Any) -> tuple[Any, Any]:
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    if mesh is None:
        state, out_shardings = tx.init(jax.device_put(params)), None
    else:
        (params_sharding, state_sharding, _), _ = dp.zero_layout(tx, mesh)
        params = jax.device_put(params, params_sharding)
        state = jax.jit(tx.init, out_shardings=state_sharding)(params)
        grads = jax.device_put(grads, [params_sharding] * len(grads))
        out_shardings = (params_sharding, state_sharding)
    jitted = jax.jit(step, donate_argnums=(0, 1), out_shardings=out_shardings)
    for g in grads:
        params, state = jitted(params, state, g)
    return params, adamx.ema_params(state)


def check_numbers(mesh: Mesh) -> None:
    """20 steps with ZeRO state give the one-device parameters and EMA."""
    for clip in (False, True):
        tx = dp.make_tx(clip)
        one, losses, grads = train(tx, None, zero=False)
        zero_split, _, _ = train(tx, mesh, zero=True)
        replicated_split, _, _ = train(tx, mesh, zero=False)
        print(f"--- 20 steps, clipping {clip}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
        assert losses[-1] < 0.8 * losses[0], losses
        same_grads = max_deviation(replay(tx, grads, mesh), replay(tx, grads, None))
        same_split = max_deviation(zero_split, replicated_split)
        split = max_deviation(zero_split, one)
        print(
            f"    max |deviation| of parameters and EMA: ZeRO vs one device, same gradients: "
            f"{same_grads:.3g}; ZeRO vs replicated state, batch split over 8 devices: "
            f"{same_split:.3g}; batch split vs one device: {split:.3g}"
        )
        tolerance = CLIPPED_ATOL if clip else 0.0  # elementwise arithmetic: bit-identical
        assert same_grads <= tolerance and same_split <= tolerance, (same_grads, same_split)
        assert split <= SPLIT_BATCH_ATOL, split


def check_quantised(mesh: Mesh) -> None:
    """8-bit moments and their per-block scales split over the data axis too: the same numbers
    as on one device."""
    tx = adamx.adam(learning_rate=3e-3, use_ema=True, mu_dtype="8bit", nu_dtype="8bit")
    _, _, grads = train(dp.make_tx(clip=False), None, zero=False)
    (params_sharding, state_sharding, _), _ = dp.zero_layout(tx, mesh)
    state = jax.jit(tx.init, out_shardings=state_sharding)(
        jax.device_put(dp.init_params(0), params_sharding)
    )
    split = [
        path_str(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if leaf.dtype.itemsize == 1 and not leaf.sharding.is_fully_replicated
    ]
    held = max(state_bytes_per_device(state).values())
    whole = sum(leaf.nbytes for leaf in jax.tree.leaves(state) if leaf.sharding.is_fully_replicated)
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    deviation = max_deviation(replay(tx, grads, mesh), replay(tx, grads, None))
    print(
        f"--- 8-bit moments: {len(split)} code leaves split; state {held} of {total} bytes per "
        f"device ({whole} in leaves left whole); ZeRO vs one device, same gradients: "
        f"max |deviation| {deviation:.3g}"
    )
    assert len(split) == 2 * 9 and held <= (total - whole) / 8 + whole, (split, held)
    assert deviation == 0.0, deviation


def gpt2_xl_shapes(mesh: Mesh, spec: Any) -> Any:
    """GPT-2 XL's parameter shapes (1.56B), as float32 `ShapeDtypeStruct`s placed by `spec`."""
    d = 1600
    layer = {"qkv": (d, 3 * d), "out": (d, d), "up": (d, 4 * d), "down": (4 * d, d)}
    layer |= {"qkv_bias": (3 * d,), "up_bias": (4 * d,), "norm1": (d,), "norm2": (d,)}
    shapes = {"embed": (50304, d), "position": (1024, d), "layers": [layer] * 48}
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, np.float32, sharding=NamedSharding(mesh, spec(s))),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def print_memory_table(mesh: Mesh) -> None:
    """GiB per device of GPT-2 XL's parameters and adamx state on 8 devices, by layout."""

    def gib(tree: Any) -> float:
        return (
            sum(np.prod(x.sharding.shard_shape(x.shape)) * 4 for x in jax.tree.leaves(tree)) / 2**30
        )

    replicated = gpt2_xl_shapes(mesh, lambda _: P())
    fsdp = gpt2_xl_shapes(mesh, lambda s: P("data") if s[0] % 8 == 0 else P())
    layouts = {
        "replicated": (replicated, None),
        "FSDP": (fsdp, None),
        "ZeRO-1": (replicated, "data"),
    }
    print("--- GPT-2 XL (1.56B parameters, float32) on 8 devices: GiB per device, params + state")
    for name, tx in {
        "adam()": adamx.adam(),
        "adam(use_ema=True, gradient_accumulation_steps=2)": adamx.adam(
            use_ema=True, gradient_accumulation_steps=2
        ),
    }.items():
        cells = []
        for layout, (params, axis) in layouts.items():
            shardings = adamx.state_shardings(tx, params, shard_over=axis)
            state = jax.tree.map(
                lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                jax.eval_shape(tx.init, params),
                shardings,
            )
            cells.append(f"{layout} {gib(params):.2f} + {gib(state):.2f}")
        print(f"    {name}: " + "; ".join(cells))


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    check_memory(mesh)
    check_compiled(mesh)
    check_numbers(mesh)
    check_quantised(mesh)
    print_memory_table(mesh)
    print("ZeRO checks ok")


if __name__ == "__main__":
    main()
