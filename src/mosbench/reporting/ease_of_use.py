"""The ease-of-use inventory: what the framework provides and what we wrote, read off the code.

Model components are found by building every registered model (tiny sizes, on
the CPU) and walking its layers; the procedure pieces that are not layers are
listed in ``PROCEDURE`` by the objects that implement them. Each object is
classified by the package it comes from (``keras``/``tensorflow``: built in;
``mosbench``: written), and written ones are measured in code lines: non-blank
lines that hold code, neither comments nor docstrings.

``python -m mosbench.reporting.ease_of_use``, run in the repository root,
writes ``results/aggregate/ease_of_use.csv`` and ``ease_of_use.md``.
"""

import ast
import functools
import inspect
import io
import pkgutil
import textwrap
import tokenize

import keras
import pandas as pd
import tensorflow as tf

from mosbench.engines.tensorflow.models import build_model
from mosbench.io import atomic_path
from mosbench.workload import MODELS

COLUMNS = ["component", "kind", "provided", "implementation", "lines", "used_by", "note"]
KINDS = ("model", "training", "evaluation")
ALL = tuple(MODELS)
AWD = tuple(m for m, head in MODELS.items() if head)
MIXTURES = tuple(m for m, head in MODELS.items() if head in ("moc", "mos"))
MOS = tuple(m for m, head in MODELS.items() if head == "mos")
# The smallest sizes every model accepts (a tied softmax needs nhidlast == emsize == nhid).
TINY = dict(emsize=4, nhid=4, nhidlast=4, nlayers=2, dropout=0.1, dropouth=0.1, dropouti=0.1,
            dropoute=0.1, wdrop=0.1, init_range=0.1, tie_weights=True, n_experts=2, dropoutl=0.1)

KERAS_MODELS = "mosbench.engines.tensorflow.models."  # where the Keras models live

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

# (component, kind, implementing objects as pkgutil.resolve_name paths, models using it by
# default, why). "module:attribute" where TensorFlow's public names are not its modules.
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
    ("variable-length BPTT, lr scaled by seq_len/bptt", "training",
     ["mosbench.training.bptt.sample_seq_len", "mosbench.training.bptt.epoch_windows"], AWD,
     "no Keras data utility for truncated BPTT over a carried state"),
    ("AR penalty", "training",
     [KERAS_MODELS + "activation_regularisation.activation_penalty"], AWD, ""),
    ("TAR penalty", "training",
     [KERAS_MODELS + "activation_regularisation.temporal_activation_penalty"], AWD,
     ""),
    ("NT-ASGD trigger", "training", ["mosbench.training.nt_asgd.nonmono_triggered"], AWD, ""),
    ("NT-ASGD iterate average", "training",
     ["mosbench.engines.tensorflow.averaging.IterateAverage"], AWD,
     "Keras 3 has no averaged SGD; use_ema keeps an exponential average"),
    ("schedule: plateau decay, averaging switch, finetune", "training",
     ["mosbench.training.train._schedule", "mosbench.training.train._next_phase"], ALL,
     "ReduceLROnPlateau is a callback of fit() only"),
    ("seeding", "training", ["keras:utils.set_random_seed"], ALL, ""),
    ("best-weights file", "training", ["keras:Model.save_weights"], ALL,
     "insists on a .weights.h5 name, so atomic writes keep that suffix"),
    ("resumable checkpoints", "training", ["mosbench.training.checkpoint"], ALL,
     "save_weights holds the model only, not optimiser, average, states and loop"),
    ("token NLL of a softmax head, fused", "training",
     ["tensorflow:nn.sparse_softmax_cross_entropy_with_logits"], ALL,
     "used through the models' nll(), which never writes the log-probabilities"),
    ("token NLL of the MoS mixture, hand-differentiated", "training",
     [KERAS_MODELS + "mixture_of_softmaxes.mixture_nll"], MOS,
     "autodiff of the log-space mixture writes several (tokens, K, vocab) tensors"),
    ("LSTM recurrence off cuDNN, hand-differentiated", "model",
     [KERAS_MODELS + "fast_lstm.lstm_recurrence"], ALL,
     "autodiff of tf.scan sums dW_hh one time step at a time"),
    ("perplexity with carried state", "evaluation",
     ["mosbench.engines.tensorflow.steps.make_eval_step",
      "mosbench.evaluation.perplexity.evaluate_loss"], ALL,
     "Model.evaluate() scores batches independently"),
    ("next-word latency", "evaluation",
     ["mosbench.evaluation.perplexity.next_word_latency"], ALL, ""),
    ("dynamic evaluation", "evaluation",
     ["mosbench.evaluation.dynamic_eval.gradient_statistics",
      "mosbench.evaluation.dynamic_eval.decay_rates",
      "mosbench.evaluation.dynamic_eval.adaptive_losses",
      "mosbench.evaluation.dynamic_eval.dynamic_evaluation"],
     MIXTURES, "no optimiser takes statistic-scaled steps that decay to the trained weights"),
    ("log-probability rank", "evaluation", ["mosbench.evaluation.rank.logprob_matrix",
                                            "mosbench.evaluation.rank.numerical_rank"], ALL,
     "NumPy's SVD with a float32 tolerance"),
]


def code_lines(obj):
    """Lines of ``obj``'s source (class, function or module) that hold code."""
    source = textwrap.dedent(inspect.getsource(obj))
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        defines = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, defines) and ast.get_docstring(node, clean=False) is not None:
            docstrings.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    layout = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
              tokenize.DEDENT, tokenize.ENDMARKER}
    code = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in layout:
            code.update(range(token.start[0], token.end[0] + 1))
    return len(code - docstrings)


def _written(obj):
    """True for mosbench code, False for Keras/TensorFlow; anything else is an error."""
    origin = obj.__name__ if inspect.ismodule(obj) else obj.__module__
    if origin.split(".")[0] == "mosbench":
        return True
    if origin.split(".")[0] in ("keras", "tensorflow"):
        return False
    raise ValueError(f"{obj!r} comes from {origin}, neither the framework nor mosbench")


def _dotted(path):
    """A resolve_name path as people write it: ``tensorflow:function`` -> ``tf.function``."""
    return path.replace("tensorflow:", "tf.").replace(":", ".")


def _class_path(cls):
    if _written(cls):
        return f"{cls.__module__}.{cls.__qualname__}"
    from keras.src.api_export import get_name_from_symbol  # Keras' public name, if exported

    return get_name_from_symbol(cls) or f"{cls.__module__}.{cls.__qualname__}"


def _layer_classes():
    """``{class: models using it}``: every layer class of every registered model.

    Written classes bring their written bases and the framework class they
    extend; built-in layers are not opened (their sublayers are Keras' business).
    """
    found = {}
    with tf.device("/CPU:0"):
        for name in MODELS:
            queue = [build_model(name, 10, TINY, use_cudnn=False)]
            for layer in queue:
                for cls in type(layer).__mro__:
                    found.setdefault(cls, set()).add(name)
                    if not _written(cls):
                        break
                if _written(type(layer)):
                    queue.extend(layer._flatten_layers(include_self=False, recursive=False))
    return found


def _used_by(models):
    return "all" if set(models) == set(ALL) else ", ".join(m for m in ALL if m in models)


def _row(component, kind, objects, paths, models, note):
    written = {_written(obj) for obj in objects}
    if len(written) != 1:
        raise ValueError(f"{component}: mixes built-in and written implementations")
    lines = sum(code_lines(obj) for obj in objects) if written == {True} else pd.NA
    return {"component": component, "kind": kind,
            "provided": "written" if written == {True} else "built in",
            "implementation": ", ".join(paths), "lines": lines, "used_by": _used_by(models),
            "note": note}


def inventory():
    """One row per component: ``COLUMNS``, model components first, built-in before written."""
    return _inventory().copy()


@functools.cache  # builds every model: once per process is enough, the code does not change
def _inventory():
    rows = []
    for cls, models in _layer_classes().items():
        path = _class_path(cls)
        note = LAYER_NOTES.get(path) or (inspect.getdoc(cls) or "").split("\n")[0]
        rows.append(_row(cls.__name__, "model", [cls], [path], models, note))
    for component, kind, paths, models, note in PROCEDURE:
        objects = [pkgutil.resolve_name(path) for path in paths]
        rows.append(_row(component, kind, objects, [_dotted(p) for p in paths], models, note))
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"lines": "Int64"})
    order = table["kind"].map(KINDS.index) * 2 + (table["provided"] == "written")
    return table.iloc[order.argsort(kind="stable")].reset_index(drop=True)


def to_markdown(table):
    """The inventory as a Markdown page: a header paragraph, the table, the totals."""
    written = table[table["provided"] == "written"]
    cells = table.astype(object).where(table.notna(), "").astype(str)
    cells = cells.apply(lambda column: column.str.replace("|", "\\|"))
    lines = [
        "# Ease of use: built in or written",
        "",
        f"Generated from the code by `mosbench.reporting.ease_of_use` (Keras {keras.__version__},"
        f" TensorFlow {tf.__version__}). Each component a model or the training and evaluation"
        " procedure needs, the Keras/TensorFlow object that provides it or the mosbench code we"
        " wrote for it, and for written code its code lines (not blank, comment or docstring).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if c == "lines" else "---" for c in COLUMNS) + "|",
        *("| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)),
        "",
        f"**Totals:** {len(table) - len(written)} built in, {len(written)} written, "
        f"{int(written['lines'].sum())} written lines.",
    ]
    return "\n".join(lines) + "\n"


def write_inventory(csv_path, md_path):
    """Write the inventory as CSV and Markdown, each atomically; return the table."""
    table = inventory()
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        tmp.write_text(to_markdown(table), encoding="utf-8")
    return table
