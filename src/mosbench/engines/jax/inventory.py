"""What JAX and optax gave the study and what was written: the engine's half of the
ease-of-use inventory (:mod:`mosbench.reporting.ease_of_use` reads it).

JAX has no layers: a model here is a frozen dataclass of sizes and rates
whose parameters are a plain dict, so the walk over layer classes finds the
written model and head classes, the models' written base
(``models/language_model.py``) and, under them all, ``object``. Everything
else is listed in ``PROCEDURE`` rows: (component, kind, implementing objects
as pkgutil.resolve_name paths, models using it, why).
"""

import jax
import optax

from mosbench.engines.jax.models import build_model
from mosbench.workload import ALL, AWD, MIXTURES, MOS

FRAMEWORK = f"JAX {jax.__version__}, optax {optax.__version__}"
BUILT_IN_PACKAGES = ("jax", "optax", "builtins")
MODELS = "mosbench.engines.jax.models."
ENGINE = "mosbench.engines.jax.engine.JaxEngine."

LAYER_NOTES = {
    "object": "no module base class in JAX: models are frozen dataclasses, parameters a dict",
}

PROCEDURE = [
    ("LSTM layer on the GPU: cuDNN", "model", ["jax.experimental.rnn:lstm"], ALL,
     "float32 only; one call per layer (its own sizes, W_hh dropped before the call)"),
    ("LSTM layer on the CPU: lax.scan, input projection hoisted", "model",
     [MODELS + "scan_lstm.lstm_layer"], ALL,
     "JAX has no LSTM layer for the CPU; jax.experimental.rnn.lstm is cuDNN-only"),
    ("LSTM recurrence off cuDNN, hand-differentiated", "model",
     [MODELS + "scan_lstm.recurrence", MODELS + "scan_lstm._forward",
      MODELS + "scan_lstm._forward_rule", MODELS + "scan_lstm._backward",
      MODELS + "scan_lstm._varying_alike"], ALL,
     "autodiff of lax.scan sums dW_hh one time step at a time (jax.custom_vjp)"),
    ("cuDNN LSTM: flat weights packed per call, the layer chosen per device", "model",
     [MODELS + "cudnn_lstm.pack_weights", MODELS + "cudnn_lstm.cudnn_lstm_layer",
      MODELS + "recurrence.choose_cudnn", MODELS + "recurrence.lstm_layer"], ALL,
     "JAX unpacks cuDNN's flat weight layout but has no packing; time-major models, "
     "batch-major call"),
    ("check that a GPU training step compiled to cuDNN's LSTM", "training",
     [MODELS + "cudnn_lstm.assert_cudnn_lstm", ENGINE + "cudnn_calls"], ALL,
     "nothing in JAX says which kernel a program runs: its compiled text is searched "
     "for the cuDNN custom calls"),
    ("loop primitive of the recurrence", "model", ["jax:lax.scan"], ALL, ""),
    ("embedding dropout (whole word types)", "model", [MODELS + "masks.embedding_lookup"],
     AWD, "no dropout in JAX itself, let alone per word type"),
    ("locked dropout (one mask per sequence)", "model", [MODELS + "masks.locked"], AWD, ""),
    ("DropConnect on W_hh", "model", [MODELS + "masks.weight_drop"], AWD, ""),
    ("dropout masks from keys derived per forward and site", "model",
     [MODELS + "masks.dropout_mask", MODELS + "masks.site_key"], ALL,
     "explicit keys: a checkpoint is a key and a draw count"),
    ("counter-based random keys", "model", ["jax:random.fold_in", "jax:random.bernoulli"],
     ALL, ""),
    ("initialisation by the reference's rules", "model",
     [MODELS + "init.initialise", MODELS + "init.uniform"], ALL, ""),
    ("MoS mixture in float32 log space", "model",
     [MODELS + "mixture_of_softmaxes.MixtureOfSoftmaxes"], MOS,
     "logsumexp instead of the reference's probability-space sum, which underflows"),
    ("automatic differentiation", "training", ["jax:value_and_grad"], ALL, ""),
    ("compiled steps", "training", ["jax:jit"], ALL, "one program per window shape"),
    ("compile count and seconds per shape", "training",
     ["mosbench.engines.jax.compiled.Compiled"], ALL,
     "jit compiles silently on a new shape; ahead-of-time lowering makes it a figure"),
    ("global-norm clipping", "training", ["optax:clip_by_global_norm"], ALL, ""),
    ("weight decay (coupled L2)", "training", ["optax:add_decayed_weights"], ALL, ""),
    ("SGD at a per-step learning rate", "training", ["mosbench.engines.jax.steps.train_step"], ALL,
     "the rate changes every step (variable BPTT), so the step multiplies by it"),
    ("AR and TAR penalties, chunked gradient accumulation", "training",
     ["mosbench.engines.jax.steps._penalised"], AWD, ""),
    ("NT-ASGD iterate average", "training",
     ["mosbench.engines.jax.averaging.IterateAverage"], AWD,
     "optax.ema is exponential; no uniform average from a restart point"),
    ("weights and checkpoints as named arrays", "training",
     [ENGINE + "weights", ENGINE + "load_weights", ENGINE + "checkpoint_arrays",
      ENGINE + "restore_checkpoint"], ALL, "the dict is canonical: copies, no renaming"),
    ("input pipeline: NumPy windows, cached in memory and in an .npy file", "training",
     ["mosbench.engines.jax.input_pipeline"], ALL,
     "JAX has no input pipeline of its own; its users feed NumPy (or tf.data, Grain)"),
    ("evaluation step with carried state", "evaluation", [ENGINE + "eval_window"], ALL, ""),
    ("dynamic evaluation: gradient passes", "evaluation",
     [ENGINE + "gradient_statistics", ENGINE + "adaptive_losses"], MIXTURES,
     "no optax transform takes statistic-scaled steps that decay to the trained weights"),
]


def public_name(cls):
    """``object`` for the one framework-side base the written model classes have."""
    return "object" if cls is object else None


def model_layers(name, tiny):
    """``(model, its parts)`` of the named model: the head and, for a mixture, its contexts."""

    def parts(obj):
        return [value for value in (getattr(obj, "head", None), getattr(obj, "contexts", None))
                if value is not None]

    return build_model(name, 10, tiny), parts
