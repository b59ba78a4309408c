"""The PyTorch engine: the project's models in PyTorch, with the same semantics as the Keras ones.

Only this package imports torch. Its weights cross as the canonical weights of
:mod:`mosbench.workload` (``engine.canonical_parts``), as every engine's do.
"""
