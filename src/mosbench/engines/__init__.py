"""One engine per framework behind one small interface.

The training procedure (:mod:`mosbench.training.train`), evaluation and the
measurements are written once and know no framework; what differs between
TensorFlow and PyTorch lives in an engine, a class in
``mosbench.engines.<framework>.engine`` implementing :class:`Engine`
(:mod:`mosbench.engines.interface`). :func:`load_engine` imports an engine
only when a job of its framework runs, so a PyTorch job runs where TensorFlow
is not installed, and the other way round.
"""

import importlib

from mosbench.cpu_features import check_precision_hardware
from mosbench.errors import MosbenchError
from mosbench.workload import check_precision

FRAMEWORKS = ("tensorflow", "pytorch", "jax")


def engine_class(framework):
    """The engine class of ``framework`` (imports that framework)."""
    if framework not in FRAMEWORKS:
        raise MosbenchError(f"unknown framework '{framework}'; allowed: {list(FRAMEWORKS)}")
    try:
        module = importlib.import_module(f"mosbench.engines.{framework}.engine")
    except ImportError as exc:
        raise MosbenchError(
            f"the {framework} engine cannot be imported ({exc}); install it with "
            f"`pip install -e '.[{framework}]'`"
        ) from None
    return module.ENGINE


def load_engine(framework, options=None, **placement):
    """An engine of ``framework`` placed as ``placement`` says (see :class:`Engine`).

    ``options``: that framework's own settings (config key ``engines.<framework>``),
    keyword arguments of its engine.

    The precision and the CPU are checked first, before the framework is imported: an
    unknown precision, or one the CPU cannot compute, is refused in one line rather
    than crashing inside the framework.
    """
    check_precision(placement.get("precision", "float32"))
    check_precision_hardware(placement.get("precision", "float32"), placement.get("gpus", 0),
                             placement.get("devices"))
    return engine_class(framework)(**placement, **(options or {}))
