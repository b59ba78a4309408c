"""Reading the JSON files the aggregate joins: per-run records and data-pipeline records."""

from pathlib import Path

from mosbench.engines import FRAMEWORKS
from mosbench.errors import MosbenchError
from mosbench.io import read_json


def describe(keys, values):
    """``dataset=ptb, model=lstm, ...``: which record a message is about."""
    return ", ".join(f"{name}={value}" for name, value in zip(keys, values, strict=True))


def load_keyed(files, kind, keys):
    """Read JSON records into ``{tuple of their keys: (path, data)}``, each one checked.

    A file must hold an object with every name of ``keys`` and a known
    framework; two files with the same key values are an error, as a record
    counted twice would skew the means.
    """
    found = {}
    for path in map(Path, files):
        try:
            data = read_json(path)
        except (OSError, ValueError) as exc:
            raise MosbenchError(f"cannot read {kind} file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise MosbenchError(f"{kind} file {path} should hold a JSON object")
        missing = [k for k in keys if k not in data]
        if missing:
            raise MosbenchError(f"{kind} file {path} lacks {', '.join(missing)}; "
                                f"expected the keys {', '.join(keys)}")
        if data["framework"] not in FRAMEWORKS:
            raise MosbenchError(f"{kind} file {path}: unknown framework "
                                f"'{data['framework']}'; allowed: {list(FRAMEWORKS)}")
        key = tuple(data[k] for k in keys)
        if key in found:
            raise MosbenchError(f"duplicate {kind} files for {describe(keys, key)}: "
                                f"{found[key][0]} and {path}")
        found[key] = (path, data)
    return found
