"""adamx on 8 simulated CPU devices: state placement, global norms, sharded and data-parallel steps.

Run by `test_sharding.py` in its own process (the device count is fixed when JAX starts):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_check.py

Prints the sharding of every state leaf and exits non-zero on the first failed check.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import functools
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import adamx
from adamx._blockwise import scales_sharding
from adamx._sharding import _is_scales
from adamx._trees import path_str

AxisType = getattr(jax.sharding, "AxisType", None)  # absent before jax 0.6
shard_map = getattr(jax, "shard_map", None)
if shard_map is None:
    from jax.experimental.shard_map import shard_map

FEATURES: dict[str, Any] = {
    "learning_rate": 0.01,
    "amsgrad": True,
    "weight_decay": 0.05,
    "exclude_from_weight_decay": ["bias"],
    "use_ema": True,
    "ema_overwrite_frequency": 3,
    "gradient_accumulation_steps": 2,
}
CONFIGS: dict[str, Any] = {
    "elementwise": lambda: adamx.loss_scale_optimizer(adamx.adam(**FEATURES), initial_scale=8.0),
    "global_clipnorm": lambda: adamx.adam(global_clipnorm=0.1, **FEATURES),
}
SHAPES = {"embedding": (64, 16), "dense": {"kernel": (16, 32), "bias": (32,)}}
LAYOUTS = {  # name: (mesh shape, mesh axes, parameter specs)
    "fsdp": (
        (8,),
        ("fsdp",),
        {"embedding": P("fsdp"), "dense": {"kernel": P(None, "fsdp"), "bias": P("fsdp")}},
    ),
    "tensor_parallel": (
        (4, 2),
        ("data", "model"),
        {"embedding": P(None, "model"), "dense": {"kernel": P(None, "model"), "bias": P("model")}},
    ),
}


def random_tree(seed: int, scale: float = 1.0) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda shape: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32),
        SHAPES,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def make_mesh(layout: str, axis_type: str) -> Mesh:
    shape, axes, _ = LAYOUTS[layout]
    if axis_type == "explicit":
        return jax.make_mesh(shape, axes, axis_types=(AxisType.Explicit,) * len(axes))
    return Mesh(np.array(jax.devices()).reshape(shape), axes)


def place(tree: Any, mesh: Mesh, specs: Any) -> Any:
    return jax.device_put(tree, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))


def print_and_check_placement(label: str, state: Any, params: Any) -> None:
    """Prints every state leaf's sharding; leaves shaped like a parameter must share its own."""
    param_paths = {adamx_path(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
    print(f"--- {label}")
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        spec = getattr(leaf.sharding, "spec", leaf.sharding)
        print(f"    {jax.tree_util.keystr(path):70s} {leaf.dtype!s:8s} {leaf.shape!s:9s} {spec}")
        suffix = next((k for k in param_paths if adamx_path(path).endswith(k)), None)
        if suffix is not None and leaf.shape == param_paths[suffix].shape:
            param = param_paths[suffix]
            assert leaf.sharding.is_equivalent_to(param.sharding, leaf.ndim), (label, path)
        elif suffix is not None and _is_scales(leaf.shape, param_paths[suffix].shape):
            # 8-bit moments' per-block scales: the parameter's layout where blocks allow it
            param = param_paths[suffix]
            expected = scales_sharding(param.sharding, param.shape)
            assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (label, path, expected)
        else:
            assert leaf.sharding.is_fully_replicated, (label, path)


def adamx_path(path: tuple[Any, ...]) -> str:
    return "/" + path_str(path)


def run_steps(tx: Any, params: Any, state: Any, grads: list[Any]) -> tuple[Any, Any]:
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Any, state: Any, g: Any) -> tuple[Any, Any]:
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for g in grads:
        params, state = step(params, state, g)
    return params, state


def max_deviation(a: Any, b: Any) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def check_sharded_step(layout: str, axis_type: str) -> None:
    _, _, specs = LAYOUTS[layout]
    mesh = make_mesh(layout, axis_type)
    grads = [random_tree(10 + i, scale=0.3) for i in range(7)]
    # A huge gradient in the middle makes global clipping bite.
    grads[3] = jax.tree.map(lambda g: 50.0 * g, grads[3])
    for name, make_tx in CONFIGS.items():
        tx = make_tx()
        single_params, single_state = run_steps(tx, random_tree(0), tx.init(random_tree(0)), grads)

        params = place(random_tree(0), mesh, specs)
        label = f"{layout} / {axis_type} axes / {name}"
        if axis_type == "explicit":
            with jax.set_mesh(mesh):
                state = jax.jit(tx.init)(params)
                print_and_check_placement(f"{label}: jax.jit(tx.init)", state, params)
                sharded_grads = [place(g, mesh, specs) for g in grads]
                new_params, new_state = run_steps(tx, params, state, sharded_grads)
        else:
            state = jax.jit(tx.init, out_shardings=adamx.state_shardings(tx, params))(params)
            print_and_check_placement(
                f"{label}: jax.jit(tx.init, out_shardings=adamx.state_shardings(tx, params))",
                state,
                params,
            )
            print_and_check_placement(f"{label}: eager tx.init", tx.init(params), params)
            sharded_grads = [place(g, mesh, specs) for g in grads]
            new_params, new_state = run_steps(tx, params, state, sharded_grads)

        print_and_check_placement(f"{label}: state after 7 steps", new_state, new_params)
        deviation = max(
            max_deviation(new_params, single_params), max_deviation(new_state, single_state)
        )
        print(f"    sharded vs single-device step, params and state: max |dev| = {deviation:.3g}")
        if name == "elementwise":
            assert deviation == 0.0, (label, deviation)  # no reductions: bit-identical
        else:
            assert deviation <= 1e-6, (label, deviation)  # the global norm's summation order


def check_contract_configs() -> None:
    """Each configuration of the optax contract tests on FSDP-sharded parameters: the state is
    placed like its parameters and the steps give the single-device numbers (optax's sharding
    test checks the same of its optimizers)."""
    from harness import CONTRACT_CONFIGS

    _, _, specs = LAYOUTS["fsdp"]
    mesh = make_mesh("fsdp", "auto")
    grads = [random_tree(20 + i, scale=0.3) for i in range(4)]
    for name, make_tx in CONTRACT_CONFIGS.items():
        tx = make_tx(0.01)
        single_params, single_state = run_steps(tx, random_tree(0), tx.init(random_tree(0)), grads)
        params = place(random_tree(0), mesh, specs)
        state = jax.jit(tx.init, out_shardings=adamx.state_shardings(tx, params))(params)
        sharded_grads = [place(g, mesh, specs) for g in grads]
        new_params, new_state = run_steps(tx, params, state, sharded_grads)
        for new, old in zip(jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True):
            assert new.sharding.is_equivalent_to(old.sharding, new.ndim), name
        print_and_check_placement(f"contract configuration {name!r}", new_state, new_params)
        deviation = max(
            max_deviation(new_params, single_params), max_deviation(new_state, single_state)
        )
        assert deviation <= 1e-6, (name, deviation)  # global norms: the summation order


def check_global_norm(layout: str) -> None:
    """Clipping sharded gradients uses the norm over all shards: the result has norm exactly 1."""
    _, _, specs = LAYOUTS[layout]
    grads = random_tree(3, scale=10.0)
    sharded = place(grads, make_mesh(layout, "auto"), specs)
    tx = adamx.clip_by_global_norm(1.0)
    clipped, _ = jax.jit(tx.update)(sharded, tx.init(sharded), sharded)
    leaves64 = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
    norm = np.sqrt(sum(np.sum(g * g) for g in leaves64))
    for got, g in zip(jax.tree.leaves(clipped), leaves64, strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float64), g / norm, rtol=2e-6, atol=1e-8)
    print(
        f"--- {layout}: clipped sharded gradients equal g / ||g|| with the norm over all "
        f"shards ({norm:.4f})"
    )


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["embedding"])
    pred = h @ params["dense"]["kernel"] + params["dense"]["bias"]
    return jnp.mean((pred - y) ** 2)


def check_data_parallel() -> None:
    """Batch sharded over 8 devices, replicated parameters: jit and shard_map match one device."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((128, 64)), jnp.float32)
    teacher = random_tree(1, scale=0.2)
    y = jnp.tanh(x @ teacher["embedding"]) @ teacher["dense"]["kernel"]
    params = random_tree(0, scale=0.2)
    tx = adamx.adam(learning_rate=0.03, global_clipnorm=1.0, use_ema=True)

    @jax.jit
    def single_step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        updates, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    def local_step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        grads = jax.lax.pmean(jax.grad(loss_fn)(params, x, y), "data")
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # Replication checks off: jax.grad then returns each device's local gradient, averaged by
    # the explicit pmean (with them on, recent JAX already sums gradients of replicated inputs).
    check = "check_vma" if hasattr(jax, "shard_map") else "check_rep"
    mapped_step = jax.jit(
        shard_map(
            local_step,
            mesh=mesh,
            in_specs=(P(), P(), P("data"), P("data")),
            out_specs=(P(), P()),
            **{check: False},
        )
    )
    batch = NamedSharding(mesh, P("data"))
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)
    runs = {
        "one device": (single_step, x, y),
        "jit, batch-sharded input": (single_step, xs, ys),
        "shard_map, pmean of gradients": (mapped_step, xs, ys),
    }
    results = {}
    for label, (step, bx, by) in runs.items():
        p, s = params, tx.init(params)
        losses = []
        for _ in range(40):
            losses.append(float(loss_fn(p, x, y)))
            p, s = step(p, s, bx, by)
        results[label] = p
        print(f"--- data parallel, {label}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        assert losses[-1] < 0.2 * losses[0], (label, losses)
    for label, p in list(results.items())[1:]:
        deviation = max_deviation(p, results["one device"])
        print(f"    {label} vs one device: max |dev| = {deviation:.3g}")
        assert deviation <= 1e-5, (label, deviation)  # the batch mean's summation order


def check_docs_snippets() -> None:
    """Every Python block of the sharding guide runs on the 8 simulated devices."""
    page = Path(__file__).parent.parent / "docs" / "guides" / "sharding.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE)
    assert blocks, page
    for i, code in enumerate(blocks, 1):
        exec(compile(code, f"docs/guides/sharding.md (block {i})", "exec"), {})
    print(f"--- the sharding guide's {len(blocks)} snippet(s) ran on {jax.device_count()} devices")


def check_grouping_refuses_sharded() -> None:
    """`group_leaves` would re-lay-out a sharded parameter into one flat buffer: refused."""
    mesh = make_mesh("fsdp", "auto")
    sharded = {"w": jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, P("fsdp")))}
    try:
        adamx.group_leaves(sharded)
    except ValueError as error:
        assert "sharded parameter 'w'" in str(error), error
    else:
        raise AssertionError("group_leaves accepted a sharded parameter")
    replicated = {"w": jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, P()))}
    assert adamx.group_leaves(replicated).buffers[0].shape == (32,)
    print("--- group_leaves refuses sharded parameters and accepts replicated ones")


def check_8bit_on_explicit_axes() -> None:
    """8-bit moments on an `AxisType.Explicit` mesh: eager and jitted `init` place the scales
    with their parameter where its shards hold whole blocks, and the sharded steps give the
    single-device bits (blocks never cross a device); a last axis whose shards would split
    blocks is refused at `init`, naming the leaf."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    shapes = {"rows": (64, 512), "columns": (16, 4096)}  # blocks of 256: 16 per row of columns
    specs = {"rows": P("x", None), "columns": P(None, "x")}
    rng = np.random.default_rng(5)

    def make(scale: float) -> dict[str, np.ndarray]:
        return {k: (scale * rng.standard_normal(v)).astype(np.float32) for k, v in shapes.items()}

    start, grads = make(1.0), [make(0.1) for _ in range(3)]
    tx = adamx.adam(0.01, amsgrad=True, mu_dtype="8bit", nu_dtype="8bit")
    single, _ = run_steps(tx, start, tx.init(start), grads)
    with jax.set_mesh(mesh):
        params = place(start, mesh, specs)
        print_and_check_placement("8-bit, explicit axes: eager tx.init", tx.init(params), params)
        state = jax.jit(tx.init)(params)
        print_and_check_placement("8-bit, explicit axes: jax.jit(tx.init)", state, params)
        new_params, _ = run_steps(tx, params, state, [place(g, mesh, specs) for g in grads])
        assert max_deviation(new_params, single) == 0.0
        split = {"w": jax.device_put(jnp.ones((16, 1024)), NamedSharding(mesh, P(None, "x")))}
        for init in (tx.init, jax.jit(tx.init)):
            try:
                init(split)
            except ValueError as error:
                assert "the leaf at 'w' (shape (16, 1024))" in str(error), error
            else:
                raise AssertionError("8-bit init accepted shards that split blocks")
    print("--- 8-bit moments on explicit axes: placed, bit-identical, split blocks refused")


def check_8bit_split_blocks_on_auto_axes() -> None:
    """On an `AxisType.Auto` mesh a last axis whose shards split blocks trains, with the
    scales' last axis replicated by `state_shardings`, bit for bit as one device. optax's
    generic recipe hands the scales the parameter's spec instead, which does not divide them
    (the sharding guide says so)."""
    mesh = Mesh(np.array(jax.devices()), ("x",))
    rng = np.random.default_rng(6)
    start = {"w": rng.standard_normal((16, 1024)).astype(np.float32)}  # 4 blocks, 8 shards
    grads = [{"w": (0.1 * rng.standard_normal((16, 1024))).astype(np.float32)} for _ in range(3)]
    tx = adamx.adam(0.01, mu_dtype="8bit", nu_dtype="8bit")
    single, _ = run_steps(tx, start, tx.init(start), grads)
    params = place(start, mesh, {"w": P(None, "x")})
    state = jax.jit(tx.init, out_shardings=adamx.state_shardings(tx, params))(params)
    print_and_check_placement("8-bit, split blocks, auto axes", state, params)
    new_params, _ = run_steps(
        tx, params, state, [place(g, mesh, {"w": P(None, "x")}) for g in grads]
    )
    assert max_deviation(new_params, single) == 0.0
    generic = optax.tree.map_params(
        tx,
        lambda _, spec: NamedSharding(mesh, spec),
        jax.eval_shape(tx.init, params),
        {"w": P(None, "x")},
        transform_non_params=lambda _: NamedSharding(mesh, P()),
        is_leaf=lambda x: isinstance(x, P),
    )
    try:
        jax.jit(tx.init, out_shardings=generic)(params)
    except ValueError as error:
        print(f"--- optax's generic recipe on split blocks: {type(error).__name__}")
    else:
        raise AssertionError("the sharding guide says optax's recipe fails here; update it")


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    axis_types = ["auto"] + (["explicit"] if AxisType is not None else [])
    for layout in LAYOUTS:
        for axis_type in axis_types:
            check_sharded_step(layout, axis_type)
        check_global_norm(layout)
    check_contract_configs()
    check_data_parallel()
    check_docs_snippets()
    check_grouping_refuses_sharded()
    check_8bit_split_blocks_on_auto_axes()
    if AxisType is not None:
        check_8bit_on_explicit_axes()
    print("sharded checks ok")


if __name__ == "__main__":
    main()
