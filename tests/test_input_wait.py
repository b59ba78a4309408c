"""The training jobs' input wait, gathered per cell for the frameworks page."""

import pandas as pd

from mosbench.reporting.data_loading import input_wait_rows, input_wait_table


def test_input_wait_per_cell_with_what_is_missing():
    runs = pd.DataFrame({
        "dataset": ["ptb"] * 3, "model": ["mos"] * 3, "gpus": [1, 1, 2],
        "framework": ["pytorch", "pytorch", "pytorch"],
        "input_wait_fraction": [0.01, 0.03, None], "input_wait_s": [2.0, 4.0, None],
        "input_load_s": [0.5, 0.7, 0.6], "input_load_cached_pct": [0.0, 0.0, 0.0]})
    table = input_wait_table(runs)
    header, rows, lines = input_wait_rows(table, {
        "input_wait_fraction": "data-parallel: the worker processes make their own input "
                               "tensors, not timed", "epoch_time_s": "unrelated"})
    assert header[5] == "waiting for input (% of step time)"
    assert rows[0] == ["ptb", "mos", 1, "pytorch", 2, "2.00 ± 1.41", "3.00 ± 1.41",
                       "0.600 ± 0.141", "0.0"]
    assert rows[1][4:6] == [1, "–"]
    assert lines == ["- *input_wait_fraction*: absent: data-parallel: the worker processes "
                     "make their own input tensors, not timed"]
    # runs from before the measurement: the columns are missing, the table still forms
    old = input_wait_table(runs.drop(columns=["input_wait_fraction", "input_wait_s"]))
    assert old["input_wait_fraction_mean"].isna().all()
