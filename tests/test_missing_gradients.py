"""Gradients that are None: Keras drops those parameters from the call, but not from the EMA."""

from __future__ import annotations

import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from harness import check_against_keras, random_grads, random_params

import adamx
from adamx._state import find_state

CASES = {
    "plain": {"learning_rate": 0.01},
    "amsgrad+global_clipnorm+weight_decay": {
        "learning_rate": 0.01,
        "amsgrad": True,
        "global_clipnorm": 0.5,
        "weight_decay": 0.1,
    },
    # `scale` has no gradient on call 4, a real update: Keras leaves its accumulator alone, so
    # the sum of call 3 is carried into the next cycle (no clipping, which would hide it).
    "accumulation": {"learning_rate": 0.01, "gradient_accumulation_steps": 2},
    # ... and Keras's global norm on that call leaves `scale` out, partial sum and all.
    "accumulation+global_clipnorm": {
        "learning_rate": 0.01,
        "gradient_accumulation_steps": 2,
        "global_clipnorm": 0.5,
    },
    "accumulation+ema+overwrite": {
        "learning_rate": 0.01,
        "gradient_accumulation_steps": 2,
        "use_ema": True,
        "ema_overwrite_frequency": 3,
        "clipnorm": 0.5,
    },
}


def _with_missing(grads: list[Any]) -> list[Any]:
    """`embedding` has no gradient on calls 1 and 2 (it first gets one on call 3, so its
    first update uses t = 3), `scale` none on calls 4 to 6."""
    out = []
    for call, g in enumerate(grads, start=1):
        g = dict(g)
        if call <= 2:
            g["embedding"] = None
        if 4 <= call <= 6:
            g["scale"] = None
        out.append(g)
    return out


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_keras(name: str, jit: bool) -> None:
    params = random_params(11)
    grads = _with_missing(random_grads(11, 40 if jit else 12, params))
    check_against_keras(CASES[name], params, grads, jit=jit)


def test_missing_parameter_and_its_moments_stay_put() -> None:
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    tx = adamx.adam(0.1)
    state = tx.init(params)
    with pytest.warns(UserWarning, match=r"parameters \['b'\]"):
        updates, new_state = tx.update({"a": jnp.ones(2), "b": None}, state, params)
    np.testing.assert_array_equal(updates["b"], np.zeros(3))
    moments = find_state(new_state, adamx.ScaleByKerasAdamState)
    assert moments is not None
    np.testing.assert_array_equal(moments.mu["b"], np.zeros(3))
    assert float(moments.mu["a"][0]) != 0.0
    assert int(adamx.iterations(new_state)) == 1


def test_all_missing_raises_like_keras() -> None:
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    tx = adamx.adam()
    with pytest.raises(ValueError, match="No gradients provided for any variable"):
        tx.update({"a": None, "b": None}, tx.init(params), params)


def test_none_leaves_need_params() -> None:
    tx = adamx.skip_missing_gradients(adamx.scale_by_keras_adam())
    state = tx.init({"a": jnp.ones(2), "b": jnp.ones(1)})
    with warnings.catch_warnings(), pytest.raises(ValueError, match="need `params`"):
        tx.update({"a": jnp.ones(2), "b": None}, state)
