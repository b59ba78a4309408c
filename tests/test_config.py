"""Config validation: the shipped configs are valid; bad ones name the key."""

import copy

import pytest
import yaml

from conftest import REPO, TINY_CONFIG
from mosbench.config import SCHEMA_PATH, load_config, validate_config
from mosbench.engines import FRAMEWORKS
from mosbench.errors import MosbenchError


def test_shipped_configs_are_valid():
    demo = load_config(REPO / "config" / "demo.yaml")
    grid = load_config(REPO / "config" / "config.yaml")
    assert demo["run"]["gpus"] == [0] and len(demo["run"]["seeds"]) == 2
    assert grid["run"]["gpus"] == [1, 2, 4, 8] and len(grid["run"]["seeds"]) == 10
    assert set(grid["run"]["datasets"]) == {"ptb", "wikitext2"}
    assert demo["run"]["frameworks"] == list(FRAMEWORKS)  # every engine, in the demo
    # the study: every engine, JAX since it has its cuDNN LSTM (README, Frameworks)
    assert grid["run"]["frameworks"] == ["tensorflow", "pytorch", "jax"]
    # defaults from the schema are filled in
    assert demo["presets"]["synthetic"]["lstm"]["tie_weights"] is True
    assert grid["sources"]["ptb"]["members"]["train"]["sha256"].startswith("fcea919f")


def _broken(edit):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    edit(config)
    return config


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c["run"].update(models=["transformer"]), "run.models[0]"),
        (lambda c: c["run"].update(frameworks=["mxnet"]), "run.frameworks[0]"),
        (lambda c: c["run"].update(frameworks=[]), "run.frameworks"),
        (lambda c: c["run"].update(frameworks=["pytorch", "pytorch"]), "run.frameworks"),
        (lambda c: c["run"].update(frameworks="pytorch"), "run.frameworks"),
        (lambda c: c["run"].update(seeds=[-1]), "run.seeds[0]"),
        (lambda c: c["run"].update(seeds=[1.5]), "run.seeds[0]"),
        (lambda c: c["run"].update(seeds=[1, 2**32]), "run.seeds[1]"),  # 32-bit generators
        (lambda c: c["datasets"].update({"../escape": {"source": "tiny"}}), "datasets"),
        (lambda c: c["sources"].update({".hidden": c["sources"]["tiny"]}), "sources"),
        (lambda c: c["datasets"].update({"a/b": {"source": "tiny"}}), "does not match"),
        (lambda c: c["run"].update(gpus=["two"]), "run.gpus[0]"),
        (lambda c: c["run"].pop("seeds"), "'seeds' is a required property"),
        (lambda c: c["presets"]["tiny"]["lstm"].update(lr="fast"), "presets.tiny.lstm.lr"),
        (lambda c: c["presets"]["tiny"]["lstm"].update(dropout=1.5), "presets.tiny.lstm.dropout"),
        (lambda c: c["presets"]["tiny"]["lstm"].update(bptt_len=3), "presets.tiny.lstm"),
        (lambda c: c["sources"]["tiny"].update(kind="torrent"), "sources.tiny.kind"),
        (lambda c: c["sources"]["tiny"].update(vocab_size=2), "sources.tiny.vocab_size"),
        (lambda c: c["run"].update(datasets=["ptb"]), "run.datasets[0]"),
        (lambda c: c["datasets"]["tiny"].update(source="nowhere"), "datasets.tiny.source"),
        (lambda c: c["presets"].pop("tiny"), "presets.tiny.lstm"),
        (lambda c: c["presets"]["tiny"]["lstm"].update(emsize=8), "needs emsize == nhid"),
    ],
)
def test_bad_config_names_the_key(edit, expected):
    with pytest.raises(MosbenchError) as info:
        validate_config(_broken(edit))
    assert expected in str(info.value)


def test_allowed_values_are_listed():
    allowed = r"\['lstm', 'awd-lstm', 'awd-lstm-moc', 'awd-lstm-mos'\]"
    with pytest.raises(MosbenchError, match=r"is not one of " + allowed):
        validate_config(_broken(lambda c: c["run"].update(models=["gpt"])))


def test_an_unknown_framework_is_named_with_the_allowed_ones():
    with pytest.raises(MosbenchError) as info:
        validate_config(_broken(lambda c: c["run"].update(frameworks=["tensorflow", "mxnet"])))
    assert str(info.value) == ("config: config key 'run.frameworks[1]': 'mxnet' is not one of "
                               "['tensorflow', 'pytorch', 'jax']")


@pytest.mark.parametrize(("engines", "expected"), [
    ({"jax": {"bucket": 8}}, "config key 'engines.jax': Additional properties are not allowed "
                             "('bucket' was unexpected)"),
    ({"jax": {"bptt_bucket": 1}}, "config key 'engines.jax.bptt_bucket': 1 is less than the "
                                  "minimum of 2"),
    ({"mxnet": {}}, "config key 'engines': Additional properties are not allowed ('mxnet' "
                    "was unexpected)"),
])
def test_an_engine_setting_is_checked_by_name(engines, expected):
    with pytest.raises(MosbenchError) as info:
        validate_config(_broken(lambda c: c.update(engines=engines)))
    assert expected in str(info.value)


def test_engine_settings_default_to_exact_windows_and_no_shared_cache():
    config = validate_config(_broken(lambda c: c.pop("engines", None)))
    assert config["engines"] == {"jax": {"bptt_bucket": None, "compilation_cache": None}}
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert set(schema["properties"]["engines"]["properties"]) <= set(FRAMEWORKS)


def test_frameworks_default_to_tensorflow_and_match_the_engines():
    config = validate_config(_broken(lambda c: c["run"].pop("frameworks")))
    assert config["run"]["frameworks"] == ["tensorflow"]
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert schema["properties"]["run"]["properties"]["frameworks"]["items"]["enum"] == list(
        FRAMEWORKS)


def test_validation_does_not_share_defaults_between_presets():
    config = validate_config(_broken(lambda c: c["presets"].update(other=copy.deepcopy(
        c["presets"]["tiny"]))))
    config["presets"]["tiny"]["lstm"]["clip"] = 9.0
    assert config["presets"]["other"]["lstm"]["clip"] == 0.25


def test_unreadable_config_file(tmp_path):
    with pytest.raises(MosbenchError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(MosbenchError, match="not valid YAML"):
        load_config(bad)


def test_the_baseline_framework_and_the_equivalence_margins():
    import math

    from mosbench.study import comparison_settings

    config = validate_config(_broken(lambda c: c["run"].update(
        frameworks=["pytorch", "tensorflow"])))
    settings = comparison_settings(config)  # what the aggregate compares with
    assert settings["baseline"] == "pytorch"  # the first of run.frameworks
    assert settings["primary_gpus"] == 0  # the smallest full-training GPU count
    assert settings["margins"] == pytest.approx({"lstm": math.log(1.01),
                                                 "awd-lstm-mos": math.log(1.01)})
    config = validate_config(_broken(lambda c: c.update(
        statistics={"equivalence_margin_pct": {"default": 2.0, "lstm": 0.5}})
        or c["run"].update(baseline_framework="tensorflow")))
    settings = comparison_settings(config)
    assert settings["baseline"] == "tensorflow"
    assert settings["margins"] == pytest.approx({"lstm": math.log(1.005),
                                                 "awd-lstm-mos": math.log(1.02)})
    with pytest.raises(MosbenchError) as info:
        validate_config(_broken(lambda c: c["run"].update(frameworks=["tensorflow"],
                                                          baseline_framework="pytorch")))
    assert str(info.value) == ("config: config key 'run.baseline_framework': 'pytorch' is not "
                               "in run.frameworks; allowed: ['tensorflow']")
    for bad, key in (({"lstm": 0}, "statistics.equivalence_margin_pct.lstm"),
                     ({"gpt": 1.0}, "statistics.equivalence_margin_pct")):
        with pytest.raises(MosbenchError, match=key.replace(".", r"\.")):
            validate_config(_broken(lambda c, m=bad: c.update(
                statistics={"equivalence_margin_pct": m})))
