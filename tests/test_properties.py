"""Property-based tests: random pytrees, random valid hyper-parameters and feature combinations.

Properties, for every example hypothesis draws:
- adamx agrees with the float64 NumPy reference written from the spec (`reference.py`), within
  REFERENCE_RTOL, parameters and EMA;
- the state keeps its structure, shapes and dtypes from one step to the next;
- every update and every parameter keeps the parameter dtype.

The example budget is bounded (see EXAMPLES) and derandomized, so CI runs the same examples
every time. `test_properties_catch_broken_formulas` shows the properties can fail: each
mutation of a formula inside adamx makes hypothesis find a counterexample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from harness import assert_close_to_reference
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import adamx
from adamx import _clipping, _moments

EXAMPLES = 30
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclasses.dataclass(frozen=True)
class Shape:
    """A leaf of a drawn tree (a plain object, so tuples can be tree nodes)."""

    dims: tuple[int, ...]


shapes = st.lists(st.integers(0, 3), max_size=4).map(lambda dims: Shape(tuple(dims)))
trees = st.recursive(
    shapes,
    lambda children: st.one_of(
        st.dictionaries(
            st.sampled_from(["kernel", "bias", "w", "scale", "emb"]),
            children,
            min_size=1,
            max_size=3,
        ),
        st.lists(children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=3).map(tuple),
    ),
    max_leaves=6,
)


def f32(strategy: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    """Values exactly representable in float32, so only float32 arithmetic separates adamx
    from the float64 reference, not the rounding of the hyper-parameters themselves."""
    return strategy.map(lambda x: float(np.float32(x)))


@st.composite
def configs(draw: Callable[..., Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "learning_rate": draw(f32(st.floats(1e-4, 0.03))),
        "beta_1": draw(f32(st.floats(0.0, 0.99))),
        "beta_2": draw(f32(st.floats(0.5, 0.999))),
        "epsilon": draw(st.sampled_from([1e-8, 1e-7, 1e-5, 1e-3])),
        "amsgrad": draw(st.booleans()),
        "nesterov": draw(st.booleans()),
        "weight_decay": draw(st.none() | f32(st.floats(0.0, 0.1))),
        "use_ema": draw(st.booleans()),
        "loss_scale_factor": draw(st.none() | st.sampled_from([2.0, 128.0])),
        "gradient_accumulation_steps": draw(st.none() | st.integers(2, 3)),
    }
    clip = draw(st.sampled_from([None, "clipnorm", "clipvalue", "global_clipnorm"]))
    if clip is not None:
        kwargs[clip] = draw(f32(st.floats(0.1, 3.0)))
    if kwargs["use_ema"]:
        kwargs["ema_momentum"] = draw(f32(st.floats(0.0, 0.99)))
        kwargs["ema_overwrite_frequency"] = draw(st.none() | st.integers(1, 4))
    return kwargs


def build(tree: Any, seed: int, dtype: Any = np.float32) -> tuple[Any, list[Any]]:
    rng = np.random.default_rng(seed)

    def leaf(shape: Shape) -> np.ndarray:
        return rng.normal(size=shape.dims).astype(dtype)

    def is_shape(x: Any) -> bool:
        return isinstance(x, Shape)

    params = jax.tree.map(leaf, tree, is_leaf=is_shape)
    grads = [jax.tree.map(leaf, tree, is_leaf=is_shape) for _ in range(6)]
    return params, grads


def run(tx: optax.GradientTransformation, params: Any, grads: list[Any]) -> tuple[Any, Any]:
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def check_against_reference(kwargs: dict[str, Any], tree: Any, seed: int, steps: int) -> None:
    params, grads = build(tree, seed)
    grads = grads[:steps]
    ours, state = run(adamx.adam(**kwargs), params, grads)
    expected = reference.run(
        reference.Config(**kwargs),
        [np.asarray(x, np.float64) for x in jax.tree.leaves(params)],
        [[np.asarray(x, np.float64) for x in jax.tree.leaves(g)] for g in grads],
    )
    assert_close_to_reference(ours, expected.params)
    if kwargs["use_ema"]:
        assert_close_to_reference(adamx.ema_params(state), expected.average)


@SETTINGS
@given(kwargs=configs(), tree=trees, seed=st.integers(0, 2**16), steps=st.integers(1, 6))
def test_matches_the_float64_reference(
    kwargs: dict[str, Any], tree: Any, seed: int, steps: int
) -> None:
    check_against_reference(kwargs, tree, seed, steps)


@SETTINGS
@given(
    kwargs=configs(),
    tree=trees,
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]),
    mu_dtype=st.sampled_from([None, jnp.float32, jnp.bfloat16]),
)
def test_state_structure_and_dtypes_are_stable(
    kwargs: dict[str, Any], tree: Any, dtype: Any, mu_dtype: Any
) -> None:
    params, grads = build(tree, 0, dtype)
    tx = adamx.adam(**kwargs, mu_dtype=mu_dtype)
    state = initial = tx.init(params)
    signature = [(x.shape, x.dtype) for x in jax.tree.leaves(initial)]
    for g in grads[:3]:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        assert jax.tree.structure(state) == jax.tree.structure(initial)
        assert [(x.shape, x.dtype) for x in jax.tree.leaves(state)] == signature
        assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
        assert all(p.dtype == dtype for p in jax.tree.leaves(params))


class _Mutated:
    """A stand-in for `jax.numpy` in one adamx module, with one function replaced."""

    def __init__(self, **replacements: Callable[..., Any]) -> None:
        self._replacements = replacements

    def __getattr__(self, name: str) -> Any:
        return self._replacements.get(name, getattr(jnp, name))


@contextmanager
def mutated(module: Any, **replacements: Callable[..., Any]) -> Iterator[None]:
    original = module.jnp
    module.jnp = _Mutated(**replacements)
    try:
        yield
    finally:
        module.jnp = original


MUTATIONS = {
    # sqrt(v) 1% too large: every Adam step 1% too small.
    "adam step": (_moments, {"sqrt": lambda x: jnp.sqrt(x) * 1.01}),
    # clipping keeps the larger of norm and threshold: clips nothing.
    "clipping": (_clipping, {"minimum": jnp.maximum}),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_properties_catch_broken_formulas(mutation: str) -> None:
    module, replacements = MUTATIONS[mutation]

    @settings(SETTINGS, phases=[Phase.generate])  # no shrinking: finding one is enough
    @given(kwargs=configs(), tree=trees, seed=st.integers(0, 2**16), steps=st.integers(1, 6))
    def property_under_mutation(kwargs: dict[str, Any], tree: Any, seed: int, steps: int) -> None:
        check_against_reference(kwargs, tree, seed, steps)

    with mutated(module, **replacements), pytest.raises(AssertionError):
        property_under_mutation()
