"""What PyTorch gave the study and what was written: the engine's half of the
ease-of-use inventory (:mod:`mosbench.reporting.ease_of_use` reads it).

``PROCEDURE`` rows: (component, kind, implementing objects as pkgutil.resolve_name
paths, models using it, why).
"""

import torch

from mosbench.engines.pytorch.models import build_model
from mosbench.workload import ALL, AWD, MIXTURES, MOS

FRAMEWORK = f"PyTorch {torch.__version__}"
BUILT_IN_PACKAGES = ("torch",)
MODELS = "mosbench.engines.pytorch.models."
ENGINE = "mosbench.engines.pytorch.engine.PyTorchEngine."
REPLICA = "mosbench.engines.pytorch.replica.Replica."

# Why a module was written although PyTorch has a relative, or what a base class gives.
LAYER_NOTES = {
    MODELS + "weight_drop_lstm.WeightDropLSTM":
        "nn.LSTM cannot drop its own W_hh per call; the dropped matrix goes to torch.lstm",
    MODELS + "locked_dropout.LockedDropout": "nn.Dropout draws a mask per element and step",
    MODELS + "tied_softmax.TiedSoftmax": "nn.Linear's weight can be tied, but not its loss path",
    "torch.nn.Module": "base of the written modules: parameters, train/eval, state_dict",
    "torch.nn.Embedding": "its matrix is read directly: tied decoder, embedding dropout",
    "torch.nn.Linear": "MoS/MoC prior and latent projections",
}

PROCEDURE = [
    ("embedding dropout (whole word types)", "model",
     [MODELS + "embedding_dropout.embedding_dropout"], AWD,
     "nn.Embedding has no row dropout (and no padding_idx=-1 quirk here)"),
    ("dropout masks: per replica, or shared (weight drop)", "model",
     [MODELS + "masks.dropout_mask", MODELS + "masks.drawn_from"], AWD,
     "DDP processes each draw their own; the weight-drop mask must be the same on all"),
    ("fused LSTM kernel (cuDNN, oneDNN)", "model", ["torch:lstm"], ALL,
     "the op nn.LSTM calls, fed the dropped W_hh"),
    ("MoS mixture in float32 log space", "model",
     [MODELS + "mixture_of_softmaxes.MixtureOfSoftmaxes"], MOS,
     "logsumexp instead of the reference's probability-space sum, which underflows"),
    ("SGD with weight decay", "training", ["torch.optim.SGD"], ALL,
     "coupled L2, equal to Keras' decoupled decay for plain SGD"),
    ("automatic differentiation", "training", ["torch.autograd.backward"], ALL, ""),
    ("data parallelism", "training", ["torch.nn.parallel.DistributedDataParallel"], ALL,
     "processes started by the job; the gradients summed, not averaged, over ranks"),
    ("global-norm clipping", "training", ["torch.nn.utils.clip_grad_norm_"], ALL, ""),
    ("train step: accumulation over chunks, all-reduce, clip, update", "training",
     [REPLICA + "train_step", REPLICA + "_accumulate"], ALL, ""),
    ("DDP workers driven by the job's process", "training",
     ["mosbench.engines.pytorch.distributed.Workers",
      "mosbench.engines.pytorch.distributed.serve"], ALL,
     "torchrun would run the whole procedure in every rank"),
    ("AR penalty", "training", [MODELS + "activation_regularisation.activation_penalty"], AWD,
     ""),
    ("TAR penalty", "training",
     [MODELS + "activation_regularisation.temporal_activation_penalty"], AWD, ""),
    ("NT-ASGD iterate average", "training",
     ["mosbench.engines.pytorch.averaging.IterateAverage"], AWD,
     "optim.ASGD averages from its own trigger, not NT-ASGD's"),
    ("seeding", "training", ["torch.manual_seed"], ALL, ""),
    ("weights and checkpoints as named arrays", "training",
     [ENGINE + "weights", ENGINE + "load_weights", ENGINE + "checkpoint_arrays",
      ENGINE + "restore_checkpoint"], ALL, "state_dict holds tensors, not the RNG streams"),
    ("token NLL of a softmax head", "training", ["torch.nn.functional.cross_entropy"], ALL, ""),
    ("input pipeline: loader of streamed windows", "training",
     ["torch.utils.data.DataLoader"], ALL, ""),
    ("input pipeline: caches in memory and in a file", "training",
     ["mosbench.engines.pytorch.input_pipeline"], ALL,
     "no Dataset.cache in PyTorch: both caches are written by hand"),
    ("evaluation step with carried state", "evaluation", [ENGINE + "eval_window"], ALL, ""),
    ("dynamic evaluation: gradient passes", "evaluation",
     [ENGINE + "gradient_statistics", ENGINE + "adaptive_losses"], MIXTURES,
     "no optimiser takes statistic-scaled steps that decay to the trained weights"),
]


def public_name(cls):
    """``torch.nn.X`` for the classes ``torch.nn`` exports."""
    if getattr(torch.nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    return None


def model_layers(name, tiny):
    """``(module, its children)`` of the named model built at tiny sizes on the CPU."""
    return build_model(name, 10, tiny), lambda module: list(module.children())
