"""The JAX engine: plain JAX and optax, parameters a dict keyed by the canonical names."""
