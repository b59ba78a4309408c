"""Variable-length truncated BPTT, as in the AWD-LSTM and MoS reference loops.

Merity et al. (2018, section 4.1) vary the window length so that every token
is, over the epochs, at every position of a window: the base length is
``bptt`` with probability 0.95 and ``bptt / 2`` otherwise, the window length
is drawn from N(base, 5), at least 5 (and, in the MoS code, at most
``bptt + max_seq_len_delta``),
and the step's learning rate is scaled by ``seq_len / bptt`` so short windows
do not get an outsized update.
"""

import numpy as np


def sample_seq_len(rng, bptt, cap=None):
    """One window length, drawn as the reference does; at most ``cap`` when given."""
    base = bptt if rng.random() < 0.95 else bptt / 2
    seq_len = max(5, int(rng.normal(base, 5)))
    return seq_len if cap is None else min(seq_len, cap)


def epoch_windows(rng, steps, bptt, variable=True, max_seq_len_delta=None, start=0):
    """Yield ``(start, length, lr_scale)`` windows over a stream of ``steps`` positions.

    ``variable=False`` gives fixed windows of ``bptt`` (scale 1);
    ``max_seq_len_delta=None`` leaves variable lengths uncapped, as
    salesforce/awd-lstm-lm (zihangdai/mos caps them). The last window is cut at
    the end of the stream, as the reference's ``get_batch``; ``start``
    resumes an interrupted epoch.
    """
    cap = None if max_seq_len_delta is None else bptt + max_seq_len_delta
    position = start
    while position < steps - 2:
        seq_len = sample_seq_len(rng, bptt, cap) if variable else bptt
        length = min(seq_len, steps - 1 - position)
        yield position, length, seq_len / bptt
        position += length


def rng_state(rng):
    """A JSON-serialisable snapshot of a NumPy generator."""
    return rng.bit_generator.state


def restore_rng(state):
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng
