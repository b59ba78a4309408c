"""One path for configuration: YAML -> JSON schema (defaults filled) -> checks.

The Snakefile validates with Snakemake's ``validate`` against the same schema
file (:data:`SCHEMA_PATH`) and then calls :func:`check_consistency`; the
``mosbench`` command calls :func:`load_config`, which does both. Errors name
the key and what was allowed.
"""

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

from mosbench.errors import MosbenchError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
SPLITS = ("train", "valid", "test")


def _schema():
    """The schema, parsed once per process (a fresh copy each call: callers may not mutate it)."""
    return copy.deepcopy(_parsed_schema())


@functools.cache
def _parsed_schema():
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def _validator_with_defaults():
    """A validator that also fills in schema defaults (the jsonschema FAQ recipe)."""
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for key, subschema in properties.items():
            if isinstance(instance, dict) and "default" in subschema:
                instance.setdefault(key, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def key_path(parts):
    """``['run', 'models', 0]`` -> ``run.models[0]``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def validate_config(config, origin="config"):
    """Validate ``config`` in place against the schema and the cross-key rules."""
    if not isinstance(config, dict):
        raise MosbenchError(f"{origin}: expected a YAML mapping at the top level")
    typed_overrides(config)
    error = jsonschema.exceptions.best_match(
        _validator_with_defaults()(_schema()).iter_errors(config)
    )
    if error is not None:
        key = key_path(error.absolute_path)
        raise MosbenchError(f"{origin}: config key '{key}': {error.message}")
    try:
        check_consistency(config)
    except MosbenchError as exc:
        raise MosbenchError(f"{origin}: {exc}") from None
    return config


def typed_overrides(config):
    """Give strings the types the schema asks for at their keys; returns ``config`` (changed).

    ``snakemake --config 'run={seeds: [1, 2]}'`` parses a nested value with
    YAML's BaseLoader, which leaves every scalar a string (``["1", "2"]``). A
    string where the schema allows no string but a number, a boolean or null
    is read as YAML (``"2"`` -> 2, ``"true"`` -> True, ``"1e-6"`` -> 1e-06) and
    kept if it then fits; ``"null"`` is None wherever null is allowed. Anything
    else is left for validation to reject, with its key.
    """
    return _typed(config, _schema(), _parsed_schema())


def _typed(value, schema, root):
    branches = _branches(schema, root)
    if isinstance(value, dict):
        for key, item in value.items():
            sub = [b["properties"][key] for b in branches if key in b.get("properties", {})]
            sub += [b["additionalProperties"] for b in branches
                    if isinstance(b.get("additionalProperties"), dict)]
            value[key] = _typed(item, {"anyOf": sub}, root)
    elif isinstance(value, list):
        items = [b["items"] for b in branches if isinstance(b.get("items"), dict)]
        value[:] = [_typed(item, {"anyOf": items}, root) for item in value]
    elif isinstance(value, str):
        types = set()
        for branch in branches:
            kind = branch.get("type", [])
            types.update([kind] if isinstance(kind, str) else kind)
            types.update(_json_type(v) for v in branch.get("enum", []))
            if "const" in branch:
                types.add(_json_type(branch["const"]))
        if "null" in types and value in ("null", "Null", "NULL", "~"):
            return None  # YAML's null, even where a string is allowed too
        if types and "string" not in types:
            try:
                parsed = yaml.safe_load(value)
                if isinstance(parsed, str) and "number" in types:
                    parsed = float(value)  # YAML 1.1 reads 1e-6 as a string
            except (yaml.YAMLError, ValueError):
                return value
            if _json_type(parsed) in types or (_json_type(parsed) == "integer"
                                                and "number" in types):
                return parsed
    return value


def _branches(schema, root):
    """The subschemas that may apply at one place: ``$ref``, ``allOf``/``anyOf``/``oneOf``
    and ``then`` followed, as a flat list of plain schemas."""
    found, todo = [], [schema]
    while todo:
        node = todo.pop()
        if not isinstance(node, dict):
            continue
        found.append(node)
        if "$ref" in node:
            target = root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            todo.append(target)
        for key in ("allOf", "anyOf", "oneOf"):
            todo.extend(node.get(key, []))
        todo.extend(node[key] for key in ("then", "else") if key in node)
    return found


def _json_type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string" if isinstance(value, str) else type(value).__name__


def model_names():
    """The models the schema allows, in its order."""
    return list(_schema()["properties"]["run"]["properties"]["models"]["items"]["enum"])


def check_gpus(config, gpus, where="--gpus"):
    """Refuse a GPU count above ``cluster.max_gpus`` (the most one node of the partition has).

    ``where`` names the input that asked for ``gpus`` in the message.
    """
    limit = (config.get("cluster") or {}).get("max_gpus")
    if limit is not None and gpus > limit:
        raise MosbenchError(
            f"{where}: {gpus} GPUs is more than cluster.max_gpus = {limit}, the most one node "
            f"of the partition has; expected at most {limit} (or raise cluster.max_gpus)"
        )


def check_consistency(config):
    """Rules a schema cannot express: names that must refer to other entries, limits."""
    sources, datasets, presets = config["sources"], config["datasets"], config["presets"]
    baseline, frameworks = config["run"].get("baseline_framework"), config["run"].get(
        "frameworks", [])
    if baseline is not None and baseline not in frameworks:
        raise MosbenchError(
            f"config key 'run.baseline_framework': '{baseline}' is not in run.frameworks; "
            f"allowed: {frameworks}"
        )
    for key in ("gpus", "train_gpus"):
        for i, gpus in enumerate(config["run"].get(key) or []):
            check_gpus(config, gpus, f"config key 'run.{key}[{i}]'")
    for name, dataset in datasets.items():
        if dataset["source"] not in sources:
            raise MosbenchError(
                f"config key 'datasets.{name}.source': '{dataset['source']}' is not a source; "
                f"allowed: {sorted(sources)}"
            )
    for i, name in enumerate(config["run"]["datasets"]):
        if name not in datasets:
            raise MosbenchError(
                f"config key 'run.datasets[{i}]': '{name}' is not a dataset; "
                f"allowed: {sorted(datasets)}"
            )
        for model in config["run"]["models"]:
            if model not in presets.get(name, {}):
                raise MosbenchError(
                    f"config key 'presets.{name}.{model}' is missing: every dataset x model "
                    "in `run` needs hyperparameters"
                )
    check_grid(config)
    # The decoder of a tied softmax is the transposed embedding: the last hidden size must fit.
    tied_sizes = {"lstm": "nhid", "awd-lstm": "nhidlast"}
    for dataset, models in presets.items():
        for model, values in models.items():
            last = tied_sizes.get(model)
            if last and values.get("tie_weights", True) and values["emsize"] != values[last]:
                raise MosbenchError(
                    f"config key 'presets.{dataset}.{model}': a tied softmax needs emsize == "
                    f"{last} (got {values['emsize']} and {values[last]})"
                )


def check_grid(config):
    """Refuse a grid with a training cell that cannot run, naming every such cell.

    Data parallelism splits the preset's global batch over the job's GPUs,
    unevenly where it must (``engines.replicas.replica_rows``); a cell with more
    GPUs than sequences in the batch would leave devices without rows.
    """
    run, presets = config["run"], config["presets"]
    cells = [f"{dataset} {model} gpus={gpus} (batch_size {batch})"
             for dataset in run["datasets"] for model in run["models"]
             if (batch := presets.get(dataset, {}).get(model, {}).get("batch_size")) is not None
             for gpus in sorted(set(run["gpus"]) | set(run.get("train_gpus") or []))
             if gpus > batch]
    if cells:
        raise MosbenchError(
            "config keys 'run.gpus' / 'run.train_gpus' and "
            "'presets.<dataset>.<model>.batch_size': these cells "
            "split a batch over more GPUs than it has sequences: " + "; ".join(cells)
            + ". Expected gpus <= batch_size: drop those GPU counts or raise the batch size"
        )


def load_config(path):
    """Read, validate and complete a config file."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MosbenchError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise MosbenchError(f"config file {path} is not valid YAML: {exc}") from exc
    return validate_config(config, origin=str(path))


def preset(config, dataset, model):
    """The hyperparameters of one (dataset, model) pair."""
    presets = config["presets"]
    if dataset not in presets:
        raise MosbenchError(
            f"unknown dataset '{dataset}': config has no preset presets.{dataset}.{model}; "
            f"datasets with presets: {sorted(presets)}"
        )
    if model not in model_names():
        raise MosbenchError(
            f"unknown model '{model}': config has no preset presets.{dataset}.{model}; "
            f"allowed models: {model_names()}"
        )
    if model not in presets[dataset]:
        raise MosbenchError(
            f"config has no preset presets.{dataset}.{model}; models with a preset for "
            f"{dataset}: {sorted(presets[dataset])}"
        )
    return dict(presets[dataset][model])


def source_of(config, dataset):
    """Name and config of the source a dataset is tokenised from."""
    try:
        name = config["datasets"][dataset]["source"]
    except KeyError:
        raise MosbenchError(
            f"unknown dataset '{dataset}'; allowed: {sorted(config['datasets'])}"
        ) from None
    return name, config["sources"][name]
