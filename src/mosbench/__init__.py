"""mosbench: a reproducible benchmark of deep-learning frameworks on
Mixture-of-Softmaxes language models (Yang et al., ICLR 2018)."""

__version__ = "0.1.0"
