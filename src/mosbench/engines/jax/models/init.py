"""Initialisation of the canonical weights by the reference's rules, one key per tensor."""

import jax
import jax.numpy as jnp


def uniform(key, shape, bound):
    """uniform(-bound, bound), float32."""
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def initialise(key, shapes, rules):
    """``{name: array}`` in ``shapes``' order; ``rules[name](key, shape)`` draws each tensor.

    Each tensor's key folds in its position, so tensors never share numbers and
    adding a tensor at the end moves none of the others.
    """
    return {name: rules[name](jax.random.fold_in(key, index), shape)
            for index, (name, shape) in enumerate(shapes.items())}
