"""The PyTorch engine: the project's models in PyTorch, with the same semantics as the Keras ones.

Only this package imports torch; ``transfer`` copies weights between the two frameworks.
"""
