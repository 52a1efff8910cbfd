"""The full optimizer state round-trips through Orbax, and resumed training is bit-identical."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from harness import random_grads, random_params, run_adamx

import adamx

ocp = pytest.importorskip("orbax.checkpoint")


def every_feature() -> optax.GradientTransformation:
    return adamx.loss_scale_optimizer(
        adamx.adam(
            optax.exponential_decay(0.01, 5, 0.7),
            amsgrad=True,
            weight_decay=0.01,
            exclude_from_weight_decay=["bias"],
            global_clipnorm=1.0,
            use_ema=True,
            ema_overwrite_frequency=3,
            gradient_accumulation_steps=3,
        ),
        initial_scale=2.0**10,
        dynamic_growth_steps=4,
    )


def test_resume_from_checkpoint_is_bit_identical(tmp_path: Path) -> None:
    tx = every_feature()
    params = jax.tree.map(np.asarray, random_params(0))
    grads = random_grads(0, 24, params)
    grads[14] = jax.tree.map(lambda g: g * np.inf, grads[14])  # a skipped step after the resume
    straight = run_adamx(tx, params, grads)

    params_10, state_10 = run_adamx(tx, params, grads[:10])
    checkpointer = ocp.StandardCheckpointer()
    saved = {"params": params_10, "opt_state": state_10}
    checkpointer.save(tmp_path / "step_10", saved)
    checkpointer.wait_until_finished()
    target = {
        "params": jax.eval_shape(lambda: params),
        "opt_state": jax.eval_shape(tx.init, params),
    }
    restored = checkpointer.restore(tmp_path / "step_10", target)

    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state_10)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert (np.asarray(got) == np.asarray(want)).all()
    resumed = run_adamx(tx, restored["params"], grads[10:], state=restored["opt_state"])
    for got, expected in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        assert (np.asarray(got) == np.asarray(expected)).all()
    # The run did exercise what was saved: an EMA, a skipped step, a partial accumulation.
    state = straight[1]
    assert int(adamx.iterations(state)) == (24 - 1) // 3  # 23 calls accumulated, 1 skipped
    assert float(state.loss_scale) != 2.0**10
    assert int(state_10.inner_state[0].mini_step) == 1  # saved in the middle of an accumulation
