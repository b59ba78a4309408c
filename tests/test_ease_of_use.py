"""The ease-of-use inventory reflects the code: what we wrote, what Keras gave, line counts."""

import inspect

import pandas as pd
import pytest

from mosbench.engines.tensorflow.averaging import IterateAverage
from mosbench.engines.tensorflow.models.locked_dropout import LockedDropout
from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM
from mosbench.reporting.ease_of_use import COLUMNS, KINDS, code_lines, inventory, write_inventory
from mosbench.workload import MODELS

WRITTEN = [
    "mosbench.engines.tensorflow.models.weight_drop_lstm.WeightDropLSTM",
    "mosbench.engines.tensorflow.models.locked_dropout.LockedDropout",
    "mosbench.engines.tensorflow.models.embedding_dropout.embedding_dropout",
    "mosbench.engines.tensorflow.models.mixture_of_softmaxes.MixtureOfSoftmaxes",
    "mosbench.engines.tensorflow.models.tied_softmax.TiedSoftmax",
    "mosbench.engines.tensorflow.averaging.IterateAverage",
]
# Built-in layer -> the models that use it (lstm.py, awd_lstm.py, expert_contexts.py).
BUILT_IN = {
    "keras.layers.Embedding": "all",
    "keras.layers.LSTM": "lstm",
    "keras.layers.Dropout": "lstm",
    "keras.layers.Dense": "awd-lstm-moc, awd-lstm-mos",
}


@pytest.fixture(scope="module")
def table():
    return inventory()


def row(table, implementation):
    rows = table[table["implementation"] == implementation]
    assert len(rows) == 1, f"{implementation}: {len(rows)} rows"
    return rows.iloc[0]


def count_by_hand(obj):
    """Code lines by plain text: no blank lines, comment lines or triple-quoted blocks."""
    count, in_docstring = 0, False
    for line in inspect.getsource(obj).splitlines():
        text = line.strip()
        if in_docstring or text.startswith('"""'):
            if text.count('"""') % 2:
                in_docstring = not in_docstring
            continue
        count += bool(text) and not text.startswith("#")
    return count


def _sample(x):
    """A docstring
    on two lines."""
    # a comment

    y = (x +
         1)  # a trailing comment
    return y


def test_code_lines_skips_blanks_comments_and_docstrings():
    assert code_lines(_sample) == 4  # def, the two lines of y = ..., return


def test_table_shape(table):
    assert list(table.columns) == COLUMNS
    assert set(table["kind"]) == set(KINDS)
    assert set(table["provided"]) == {"built in", "written"}
    assert table["implementation"].is_unique
    # Written means mosbench code, and only written code has a line count.
    written = table["provided"] == "written"
    assert (written == table["implementation"].str.startswith("mosbench.")).all()
    assert (table.loc[written, "lines"] > 0).all()
    assert table.loc[~written, "lines"].isna().all()


@pytest.mark.parametrize("implementation", WRITTEN)
def test_written_components(table, implementation):
    entry = row(table, implementation)
    assert entry["provided"] == "written"
    assert entry["lines"] > 0


@pytest.mark.parametrize("component", [WeightDropLSTM, LockedDropout, IterateAverage])
def test_line_counts_match_an_independent_count(table, component):
    entry = row(table, f"{component.__module__}.{component.__qualname__}")
    assert entry["lines"] == count_by_hand(component)


@pytest.mark.parametrize(("implementation", "used_by"), BUILT_IN.items())
def test_built_in_layers(table, implementation, used_by):
    entry = row(table, implementation)
    assert entry["provided"] == "built in"
    assert entry["kind"] == "model"
    assert entry["used_by"] == used_by


def test_used_by_comes_from_the_built_models(table):
    # The plain LSTM has no weight drop.
    assert row(table, WRITTEN[0])["used_by"].split(", ") == ["awd-lstm", "awd-lstm-moc",
                                                             "awd-lstm-mos"]
    tied = "mosbench.engines.tensorflow.models.tied_softmax.TiedSoftmax"
    assert row(table, tied)["used_by"] == "awd-lstm"
    used = set()
    for value in table["used_by"]:
        used |= set(MODELS) if value == "all" else set(value.split(", "))
    assert used == set(MODELS)


def test_write_inventory(table, tmp_path):
    csv_path, md_path = tmp_path / "ease_of_use.csv", tmp_path / "out" / "ease_of_use.md"
    write_inventory(csv_path, md_path)
    written = pd.read_csv(csv_path)
    assert list(written.columns) == COLUMNS
    assert written["implementation"].tolist() == table["implementation"].tolist()
    lines = md_path.read_text(encoding="utf-8").splitlines()
    rows = [line for line in lines if line.startswith("| ")][1:]  # less the header row
    assert len(rows) == len(table)
    assert all(f"| {name} |" in text for name, text in zip(table["component"], rows,
                                                           strict=True))
    n_written = int((table["provided"] == "written").sum())
    assert lines[-1] == (f"**Totals, tensorflow:** {len(table) - n_written} built in, "
                         f"{n_written} written, {int(table['lines'].sum())} written lines.")
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind
