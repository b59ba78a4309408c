"""What TensorFlow / Keras gave the study and what was written: the engine's half of the
ease-of-use inventory (:mod:`mosbench.reporting.ease_of_use` reads it).

``PROCEDURE`` rows: (component, kind, implementing objects as pkgutil.resolve_name
paths, models using it, why); "module:attribute" where TensorFlow's public
names are not its modules.
"""

import keras
import tensorflow as tf

from mosbench.engines.tensorflow.models import build_model
from mosbench.workload import ALL, AWD, MIXTURES, MOS

FRAMEWORK = f"Keras {keras.__version__}, TensorFlow {tf.__version__}"
BUILT_IN_PACKAGES = ("keras", "tensorflow")
KERAS_MODELS = "mosbench.engines.tensorflow.models."  # where the Keras models live
ENGINE = "mosbench.engines.tensorflow.engine.TensorFlowEngine."

# Why a layer was written although Keras has a relative, or what a base class gives.
LAYER_NOTES = {
    KERAS_MODELS + "weight_drop_lstm.WeightDropLSTM":
        "keras.layers.LSTM cannot drop its own W_hh per call and has one bias vector",
    KERAS_MODELS + "locked_dropout.LockedDropout":
        "Dropout(noise_shape=(None, 1, None)) would draw one mask for all replicas",
    KERAS_MODELS + "tied_softmax.TiedSoftmax":
        "Keras has no decoder tied to an Embedding",
    "keras.layers.Embedding": "its matrix is read directly: tied decoder, embedding dropout",
    "keras.layers.LSTM": "PyTorch's init set through initializers, unit_forget_bias=False",
    "keras.layers.Dense": "MoS/MoC prior and latent projections, PyTorch's Linear init",
    "keras.Layer": "base of the written layers: weights, tracking, get_config",
    "keras.Model": "base of the model classes: variables, save_weights/load_weights",
}

PROCEDURE = [
    ("embedding dropout (whole word types)", "model",
     [KERAS_MODELS + "embedding_dropout.embedding_dropout"], AWD,
     "Embedding has no row dropout; the lookup reads the dropped matrix"),
    ("DropConnect mask on W_hh", "model", ["keras:random.dropout"], AWD,
     "one mask per global batch, shared by the replicas on purpose"),
    ("per-replica dropout masks", "model", [KERAS_MODELS + "replica_dropout.replica_seed",
                                            KERAS_MODELS + "replica_dropout.dropout_mask"],
     AWD, "under MirroredStrategy keras.random.dropout draws the same mask on every replica"),
    ("fused cuDNN LSTM kernel", "model", ["keras.src.backend.tensorflow.rnn:lstm"], AWD,
     "private API: the only way to feed a dropped W_hh to cuDNN"),
    ("MoS mixture in float32 log space", "model",
     [KERAS_MODELS + "mixture_of_softmaxes.mixture_log_probs"], MOS,
     "logsumexp instead of the reference's probability-space sum, which underflows"),
    ("LSTM recurrence off cuDNN, hand-differentiated", "model",
     [KERAS_MODELS + "fast_lstm.lstm_recurrence"], ALL,
     "autodiff of tf.scan sums dW_hh one time step at a time"),
    ("SGD with weight decay", "training", ["keras:optimizers.SGD"], ALL,
     "Keras' decoupled decay equals PyTorch's coupled L2 for plain SGD"),
    ("automatic differentiation", "training", ["tensorflow:GradientTape"], ALL, ""),
    ("compiled train step", "training", ["tensorflow:function"], ALL,
     "input_signature with a None time axis, else every BPTT length retraces"),
    ("data parallelism", "training", ["tensorflow:distribute.MirroredStrategy"], ALL, ""),
    ("global-norm clipping", "training", ["tensorflow:clip_by_global_norm"], ALL,
     "called after the all-reduce: clipnorm/global_clipnorm clip per replica before it"),
    ("train step: accumulation over chunks, all-reduce, clip, update", "training",
     ["mosbench.engines.tensorflow.steps.make_train_step"], ALL,
     "fit() carries no explicit states; apply() sums replicas again, so grads are divided"),
    ("AR penalty", "training",
     [KERAS_MODELS + "activation_regularisation.activation_penalty"], AWD, ""),
    ("TAR penalty", "training",
     [KERAS_MODELS + "activation_regularisation.temporal_activation_penalty"], AWD, ""),
    ("NT-ASGD iterate average", "training",
     ["mosbench.engines.tensorflow.averaging.IterateAverage"], AWD,
     "Keras 3 has no averaged SGD; use_ema keeps an exponential average"),
    ("seeding", "training", ["keras:utils.set_random_seed"], ALL, ""),
    ("weights and checkpoints as named arrays", "training",
     [ENGINE + "weights", ENGINE + "load_weights", ENGINE + "checkpoint_arrays",
      ENGINE + "restore_checkpoint"], ALL,
     "save_weights holds the model only (not optimiser, average, generators) and wants .h5"),
    ("token NLL of a softmax head, fused", "training",
     ["tensorflow:nn.sparse_softmax_cross_entropy_with_logits"], ALL,
     "used through the models' nll(), which never writes the log-probabilities"),
    ("token NLL of the MoS mixture, hand-differentiated", "training",
     [KERAS_MODELS + "mixture_of_softmaxes.mixture_nll"], MOS,
     "autodiff of the log-space mixture writes several (tokens, K, vocab) tensors"),
    ("input pipeline: streamed and cached windows", "training",
     ["tensorflow:data.Dataset"], ALL, "Dataset.cache() in memory or in a file"),
    ("evaluation step with carried state", "evaluation",
     ["mosbench.engines.tensorflow.steps.make_eval_step"], ALL,
     "Model.evaluate() scores batches independently"),
    ("dynamic evaluation: gradient passes", "evaluation",
     [ENGINE + "gradient_statistics", ENGINE + "adaptive_losses"], MIXTURES,
     "no optimiser takes statistic-scaled steps that decay to the trained weights"),
]


def public_name(cls):
    """Keras' public name of a built-in class, if it exports one."""
    from keras.src.api_export import get_name_from_symbol

    return get_name_from_symbol(cls)


def model_layers(name, tiny):
    """``(layer, its sublayers)`` of the named model built at tiny sizes on the CPU."""
    with tf.device("/CPU:0"):
        model = build_model(name, 10, tiny, use_cudnn=False)

    def children(layer):
        return layer._flatten_layers(include_self=False, recursive=False)

    return model, children
