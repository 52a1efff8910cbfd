"""The compiled programs: XLA's own counts, free of timing noise.

The default adamx step accesses no more bytes and launches no more kernels than
`optax.adam`'s; each feature adds only the memory passes its own state needs, with no
parameter-sized temporary; decisions over all leaves reach kernels as one operand. These are
the figures the benchmark reports (`python -m adamx.benchmarks`), checked on small trees.
They run in the default test run, under the `compiled` marker (`pytest -m compiled`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import optax
import pytest

import adamx
from adamx import benchmarks

pytestmark = pytest.mark.compiled


@pytest.mark.parametrize("tree", list(benchmarks.TREES))
def test_default_step_moves_no_more_bytes_and_kernels_than_optax(tree: str) -> None:
    shapes = benchmarks.TREES[tree](0.01)
    params = benchmarks.materialize(shapes, 0)
    grads = benchmarks.materialize(shapes, 1)
    size = sum(x.size for x in jax.tree.leaves(params))
    figures = {}
    for name, tx in {"optax": optax.adam(1e-3, eps=1e-7), "adamx": adamx.adam()}.items():
        candidate = benchmarks.jax_candidate(
            name, tx.init, benchmarks.optax_step(tx), params, grads, size
        )
        # Scalars (counters, the learning rate) add a few bytes: compare per-parameter figures.
        figures[name] = (
            round(candidate.passes, 2),
            candidate.kernels,
            round(candidate.state_bytes_per_param, 2),
        )
    print(tree, figures)
    (our_passes, our_kernels, our_state), (passes, kernels, state) = (
        figures["adamx"],
        figures["optax"],
    )
    assert our_passes <= passes and our_kernels <= kernels and our_state == state == 8.0


def compiled_step(tx: optax.GradientTransformation, params: Any, grads: Any) -> Any:
    step = jax.jit(benchmarks.optax_step(tx), donate_argnums=(0, 1))
    return step.lower(params, tx.init(params), grads).compile()


# The passes each feature's own state needs beyond the default step's: the global norm reads
# the gradients once; the EMA reads the new parameters and the average and writes the average,
# and the overwrite reads the average once more; the finiteness check reads the gradients once;
# the accumulator is read and written and the gradients read, while the moments read the
# accumulator in place of the gradients.
EXTRA_PASSES: dict[str, tuple[Callable[[], optax.GradientTransformation], int]] = {
    "all features": (lambda: adamx.adam(**benchmarks.ALL_FEATURES), 1 + 3 + 1),
    "skip_nonfinite": (lambda: adamx.adam(skip_nonfinite=True), 1),
    "loss_scale_optimizer": (lambda: adamx.loss_scale_optimizer(adamx.adam()), 1),
    "loss_scale_optimizer+global_clipnorm": (
        lambda: adamx.loss_scale_optimizer(adamx.adam(global_clipnorm=1.0)),
        1 + 1,
    ),
    "loss_scale_optimizer+clipnorm+ema": (
        lambda: adamx.loss_scale_optimizer(adamx.adam(clipnorm=1.0, use_ema=True)),
        1 + 1 + 3,
    ),
    "accumulation": (lambda: adamx.adam(gradient_accumulation_steps=4), 3),
    "all features+accumulation": (lambda: adamx.adam(**benchmarks.WITH_ACCUMULATION), 5 + 3),
    "all features+skip_nonfinite": (
        lambda: adamx.adam(**benchmarks.ALL_FEATURES, skip_nonfinite=True),
        5 + 1,
    ),
}


# Fusion decisions are XLA's: jax 0.5's XLA keeps one temporary and 17 passes for all features.
@pytest.mark.skipif(
    tuple(int(part) for part in jax.__version__.split(".")[:2]) < (0, 10),
    reason="measured on the XLA of jax 0.10; older XLA fuses these steps differently",
)
@pytest.mark.parametrize("name", list(EXTRA_PASSES))
def test_features_add_only_the_passes_their_state_needs(name: str) -> None:
    """No parameter-sized temporary either, which XLA:CPU would page-fault on every call, and
    no copy of a moment (what selecting the state after the update used to cost). Two of the
    tensors share a shape, as a model's layers do: XLA shares what it can between them."""
    shapes = {"a": (2**18,), "b": (2**18,), "c": (2**17 + 8,)}
    params = benchmarks.materialize(shapes, 0)
    grads = benchmarks.materialize(shapes, 1)
    size = sum(x.size for x in jax.tree.leaves(params))
    build, extra = EXTRA_PASSES[name]
    passes, temporaries = [], []
    for tx in (adamx.adam(), build()):
        compiled = compiled_step(tx, params, grads)
        passes.append(benchmarks.bytes_accessed(compiled) / size / benchmarks.BYTES_PER_PASS)
        temporaries.append(compiled.memory_analysis().temp_size_in_bytes / (4 * size))
    assert passes[1] <= passes[0] + extra + 0.01, passes
    assert max(temporaries) < 0.01, temporaries


def kernel_operands(compiled: Any) -> int:
    """Operands of all the kernels (fusions) of the compiled entry computation, together."""
    calls = (
        re.search(r" fusion\((.*?)\), kind", line)
        for line in benchmarks.entry_instructions(compiled)
    )
    return sum(call.group(1).count("%") for call in calls if call)


@pytest.mark.parametrize(
    "build",
    [
        lambda: adamx.adam(skip_nonfinite=True),
        lambda: adamx.loss_scale_optimizer(adamx.adam()),
        lambda: adamx.loss_scale_optimizer(adamx.adam(global_clipnorm=1.0)),
        lambda: adamx.adam(**benchmarks.WITH_ACCUMULATION, skip_nonfinite=True),
    ],
    ids=["skip_nonfinite", "loss_scale_optimizer", "loss_scale+global_clipnorm", "all+skip"],
)
def test_a_decision_over_all_leaves_is_computed_once(
    build: Callable[[], optax.GradientTransformation],
) -> None:
    """A predicate over every leaf (all gradients finite) must reach each kernel as one operand:
    fused into every kernel instead, it makes compile time grow with leaves x kernels."""

    def operands(leaves: int) -> int:
        params = {f"t{i}": jax.numpy.ones(100 + i) for i in range(leaves)}
        tx = build()
        return kernel_operands(compiled_step(tx, params, params))

    assert operands(40) <= 2.2 * operands(20)


def test_grouped_step_launches_a_handful_of_kernels() -> None:
    params = benchmarks.materialize(benchmarks.many_small(0.05), 0)  # 100 tensors
    tx = adamx.adam()
    per_leaf = benchmarks.count_kernels(compiled_step(tx, params, params))
    grouped = adamx.group_leaves(params)
    assert benchmarks.count_kernels(compiled_step(tx, grouped, grouped)) <= 10 < 3 * 100 <= per_leaf


def test_kernel_count_grows_with_the_number_of_tensors() -> None:
    tx = optax.adam(1e-3)

    def kernels(n: int) -> int:
        params = {f"t{i}": jax.numpy.ones(8) for i in range(n)}
        compiled = (
            jax.jit(benchmarks.optax_step(tx)).lower(params, tx.init(params), params).compile()
        )
        return benchmarks.count_kernels(compiled)

    assert kernels(4) > kernels(1) >= 3
