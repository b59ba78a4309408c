"""The ease-of-use inventory: what each framework provides and what we wrote, read off the code.

Model components are found by building every registered model (tiny sizes, on
the CPU) and walking its layers; the procedure pieces that are not layers are
listed by the objects that implement them: the framework-neutral procedure
(``SHARED``, written once, counted for every framework) and each engine's own
list (``mosbench.engines.<framework>.inventory``). Each object is classified
by the package it comes from (the framework's: built in; ``mosbench``:
written), and written ones are measured in code lines: non-blank lines that
hold code, neither comments nor docstrings.

``python -m mosbench.reporting.ease_of_use``, run in the repository root,
writes ``results/aggregate/ease_of_use.csv`` and ``ease_of_use.md``.
"""

import ast
import functools
import importlib
import inspect
import io
import pkgutil
import textwrap
import tokenize

import pandas as pd

from mosbench.io import atomic_path
from mosbench.workload import ALL, AWD, MIXTURES, MODELS

COLUMNS = ["framework", "component", "kind", "provided", "implementation", "lines", "used_by",
           "note"]
KINDS = ("model", "training", "evaluation")
# The smallest sizes every model accepts (a tied softmax needs nhidlast == emsize == nhid).
TINY = dict(emsize=4, nhid=4, nhidlast=4, nlayers=2, dropout=0.1, dropouth=0.1, dropouti=0.1,
            dropoute=0.1, wdrop=0.1, init_range=0.1, tie_weights=True, n_experts=2, dropoutl=0.1)

# The framework-neutral procedure: written once, needed by every framework.
SHARED = [
    ("variable-length BPTT, lr scaled by seq_len/bptt", "training",
     ["mosbench.training.bptt.sample_seq_len", "mosbench.training.bptt.epoch_windows"], AWD,
     "no data utility of either framework does truncated BPTT over a carried state"),
    ("NT-ASGD trigger", "training", ["mosbench.training.nt_asgd.nonmono_triggered"], AWD, ""),
    ("schedule: plateau decay, averaging switch, finetune", "training",
     ["mosbench.training.train._schedule", "mosbench.training.train._next_phase"], ALL,
     "plateau schedulers exist; none switches to averaging or starts a finetune"),
    ("resumable checkpoints", "training", ["mosbench.training.checkpoint"], ALL,
     "atomic, verified, generation-named files with the loop's state and RNGs"),
    ("uneven batch split over devices", "training",
     ["mosbench.engines.replicas.replica_rows"], ALL, ""),
    ("perplexity with carried state", "evaluation",
     ["mosbench.evaluation.perplexity.evaluate_loss"], ALL, ""),
    ("next-word latency", "evaluation",
     ["mosbench.evaluation.perplexity.next_word_latency"], ALL, ""),
    ("dynamic evaluation: statistics rule and decay rates", "evaluation",
     ["mosbench.evaluation.dynamic_eval.decay_rates",
      "mosbench.evaluation.dynamic_eval.gradient_statistics",
      "mosbench.evaluation.dynamic_eval.adaptive_pass"], MIXTURES, ""),
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


def _written(obj, spec):
    """True for mosbench code, False for the framework's; anything else is an error."""
    origin = obj.__name__ if inspect.ismodule(obj) else obj.__module__
    if origin.split(".")[0] == "mosbench":
        return True
    if origin.split(".")[0] in spec.BUILT_IN_PACKAGES:
        return False
    raise ValueError(f"{obj!r} comes from {origin}, neither the framework nor mosbench")


def _dotted(path):
    """A resolve_name path as people write it: ``tensorflow:function`` -> ``tf.function``."""
    return path.replace("tensorflow:", "tf.").replace("torch:", "torch.").replace(":", ".")


def _class_path(cls, spec):
    if _written(cls, spec):
        return f"{cls.__module__}.{cls.__qualname__}"
    return spec.public_name(cls) or f"{cls.__module__}.{cls.__qualname__}"


def _layer_classes(spec):
    """``{class: models using it}``: every layer class of every registered model.

    Written classes bring their written bases and the framework class they
    extend; built-in layers are not opened (their sublayers are the framework's business).
    """
    found = {}
    for name in MODELS:
        model, children = spec.model_layers(name, TINY)
        queue = [model]
        for layer in queue:
            for cls in type(layer).__mro__:
                found.setdefault(cls, set()).add(name)
                if not _written(cls, spec):
                    break
            if _written(type(layer), spec):
                queue.extend(children(layer))
    return found


def _used_by(models):
    return "all" if set(models) == set(ALL) else ", ".join(m for m in ALL if m in models)


def _row(spec, component, kind, objects, paths, models, note):
    written = {_written(obj, spec) for obj in objects}
    if len(written) != 1:
        raise ValueError(f"{component}: mixes built-in and written implementations")
    lines = sum(code_lines(obj) for obj in objects) if written == {True} else pd.NA
    return {"framework": spec.__name__.split(".")[2], "component": component, "kind": kind,
            "provided": "written" if written == {True} else "built in",
            "implementation": ", ".join(paths), "lines": lines, "used_by": _used_by(models),
            "note": note}


def inventory(frameworks=("tensorflow",)):
    """One row per framework and component: ``COLUMNS``; per framework, model components
    first, built-in before written."""
    return pd.concat([_inventory(framework) for framework in frameworks], ignore_index=True)


def spec_of(framework):
    """The engine's half of the inventory (imports that framework)."""
    return importlib.import_module(f"mosbench.engines.{framework}.inventory")


@functools.cache  # builds every model: once per process is enough, the code does not change
def _inventory(framework):
    spec = spec_of(framework)
    rows = []
    for cls, models in _layer_classes(spec).items():
        path = _class_path(cls, spec)
        note = spec.LAYER_NOTES.get(path) or (inspect.getdoc(cls) or "").split("\n")[0]
        rows.append(_row(spec, cls.__name__, "model", [cls], [path], models, note))
    for component, kind, paths, models, note in spec.PROCEDURE + SHARED:
        objects = [pkgutil.resolve_name(path) for path in paths]
        rows.append(_row(spec, component, kind, objects, [_dotted(p) for p in paths], models,
                         note))
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"lines": "Int64"})
    order = table["kind"].map(KINDS.index) * 2 + (table["provided"] == "written")
    return table.iloc[order.argsort(kind="stable")].reset_index(drop=True).copy()


def to_markdown(table):
    """The inventory as a Markdown page: a header paragraph, the table, totals per framework."""
    cells = table.astype(object).where(table.notna(), "").astype(str)
    cells = cells.apply(lambda column: column.str.replace("|", "\\|"))
    versions = ", ".join(spec_of(f).FRAMEWORK for f in table["framework"].unique())
    lines = [
        "# Ease of use: built in or written",
        "",
        f"Generated from the code by `mosbench.reporting.ease_of_use` ({versions}). Each"
        " component a model or the training and evaluation procedure needs, per framework:"
        " the framework's object that provides it or the mosbench code we wrote for it, and"
        " for written code its code lines (not blank, comment or docstring). The"
        " framework-neutral procedure is written once and listed under each framework.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if c == "lines" else "---" for c in COLUMNS) + "|",
        *("| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)),
        "",
    ]
    for i, (framework, rows) in enumerate(table.groupby("framework", sort=False)):
        written = rows[rows["provided"] == "written"]
        lines += [""] * bool(i)
        lines.append(f"**Totals, {framework}:** {len(rows) - len(written)} built in, "
                     f"{len(written)} written, {int(written['lines'].sum())} written lines.")
    return "\n".join(lines) + "\n"


def write_inventory(csv_path, md_path, frameworks=("tensorflow",)):
    """Write the inventory as CSV and Markdown, each atomically; return the table."""
    table = inventory(frameworks)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(md_path) as tmp:
        tmp.write_text(to_markdown(table), encoding="utf-8")
    return table
