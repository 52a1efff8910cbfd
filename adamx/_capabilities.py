"""What a transformation can do beyond optax's contract, stated by its type (`README.md`).

- `Committable`: `update(..., commit=c)` with a boolean scalar `c`; where `c` is False the
  state comes back bit for bit and the updates are -0.0 (`adamx._commit`).
- `TakesLossScale`: `update(..., loss_scale=S)` means the gradients are those of `loss * S`,
  not yet unscaled, and the result is the one for the unscaled gradients (`adamx._loss_scale`).
"""

from __future__ import annotations

import optax


class Committable(optax.GradientTransformationExtraArgs):
    """An optimizer that takes `commit`: where it is False, the call changes no bit."""

    __slots__ = ()


class TakesLossScale(optax.GradientTransformationExtraArgs):
    """A transformation that takes the gradients of `loss * S` together with `loss_scale=S`."""

    __slots__ = ()


class CommittableTakesLossScale(Committable, TakesLossScale):
    __slots__ = ()


def with_capabilities(
    *, committable: bool, takes_loss_scale: bool
) -> type[optax.GradientTransformationExtraArgs]:
    """The class of a transformation with these capabilities."""
    return {
        (False, False): optax.GradientTransformationExtraArgs,
        (True, False): Committable,
        (False, True): TakesLossScale,
        (True, True): CommittableTakesLossScale,
    }[committable, takes_loss_scale]


def like(inner: optax.GradientTransformation) -> type[optax.GradientTransformationExtraArgs]:
    """The class for a wrapper that keeps both contracts exactly where `inner` does."""
    committable, takes_loss_scale = (isinstance(inner, c) for c in (Committable, TakesLossScale))
    return with_capabilities(committable=committable, takes_loss_scale=takes_loss_scale)
