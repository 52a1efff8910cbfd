"""Capabilities are types, decided at construction, kept exactly where the contract holds."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import assert_bit_equal, random_grads, random_params

import adamx
from adamx._commit import commit_chain
from adamx._loss_scale import unscale

BOTH = (adamx.Committable, adamx.TakesLossScale)
CASES: dict[str, tuple[Callable[[], optax.GradientTransformation], tuple[type, ...]]] = {
    "adam()": (lambda: adamx.adam(), (adamx.Committable,)),
    "adam(global_clipnorm)": (lambda: adamx.adam(global_clipnorm=1.0), BOTH),
    "adam(clipnorm, EMA, decay)": (
        lambda: adamx.adam(clipnorm=1.0, use_ema=True, weight_decay=0.1),
        BOTH,
    ),
    # Accumulation sums scaled gradients of changing scales; the finiteness check must see the
    # unscaled ones; a static factor is divided out first: none takes the loss scale.
    "adam(global_clipnorm, accumulation)": (
        lambda: adamx.adam(global_clipnorm=1.0, gradient_accumulation_steps=2),
        (adamx.Committable,),
    ),
    "adam(global_clipnorm, skip_nonfinite)": (
        lambda: adamx.adam(global_clipnorm=1.0, skip_nonfinite=True),
        (adamx.Committable,),
    ),
    "adam(global_clipnorm, loss_scale_factor)": (
        lambda: adamx.adam(global_clipnorm=1.0, loss_scale_factor=8.0),
        (adamx.Committable,),
    ),
    "adam(clipvalue)": (lambda: adamx.adam(clipvalue=1.0), (adamx.Committable,)),
    "clip_by_norm": (lambda: adamx.clip_by_norm(1.0), (adamx.TakesLossScale,)),
    "clip_by_global_norm": (lambda: adamx.clip_by_global_norm(1.0), (adamx.TakesLossScale,)),
    "skip_missing_gradients(adam(global_clipnorm))": (
        lambda: adamx.skip_missing_gradients(adamx.adam(global_clipnorm=1.0)),
        BOTH,
    ),
    "static_loss_scale(adam())": (
        lambda: adamx.static_loss_scale(adamx.adam(), 4.0),
        (adamx.Committable,),
    ),
    "loss_scale_optimizer(adam(global_clipnorm))": (
        lambda: adamx.loss_scale_optimizer(adamx.adam(global_clipnorm=1.0)),
        (adamx.Committable,),
    ),
    "accumulate_gradients(optax.adam)": (
        lambda: adamx.accumulate_gradients(optax.adam(0.1), 2),
        (adamx.Committable,),
    ),
    # optax's combinators build optax's own type: the adamx wrappers around them fall back.
    "optax.chain(adam())": (lambda: optax.chain(adamx.adam()), ()),
    "optax.adam": (lambda: optax.adam(0.1), ()),
}


@pytest.mark.parametrize("name", list(CASES))
def test_capabilities_follow_the_composition(name: str) -> None:
    build, expected = CASES[name]
    tx = build()
    for capability in (adamx.Committable, adamx.TakesLossScale):
        assert isinstance(tx, capability) == (capability in expected), capability
    if expected:
        assert isinstance(tx, optax.GradientTransformationExtraArgs)


@pytest.mark.parametrize("scale", [2.0**10, 3.0], ids=["power of two", "three"])
@pytest.mark.parametrize("name", ["adam(global_clipnorm)", "adam(clipnorm, EMA, decay)"])
def test_a_loss_scale_taker_gives_the_bits_of_its_unscaled_gradients(
    name: str, scale: float
) -> None:
    """The contract: `update(g, loss_scale=S)` is `update(unscale(g, S))`, bit for bit."""
    tx = CASES[name][0]()
    params = random_params(5)
    (g,) = random_grads(5, 1, params, scale=scale)
    state = tx.init(params)
    handed = tx.update(g, state, params, loss_scale=jnp.float32(scale))
    plain = tx.update(jax.tree.map(lambda x: unscale(x, scale), g), state, params)
    assert_bit_equal(handed, plain)
    assert max(float(np.max(np.abs(u))) for u in jax.tree.leaves(plain[0])) > 0


def test_only_the_first_transformation_of_a_commit_chain_takes_the_loss_scale() -> None:
    with pytest.raises(ValueError, match="Only the first transformation"):
        commit_chain(adamx.scale_by_keras_adam(), adamx.clip_by_global_norm(1.0))
