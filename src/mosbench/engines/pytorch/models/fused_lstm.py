"""One LSTM layer through PyTorch's fused kernel, and a check that cuDNN runs it.

``torch.lstm`` is the op ``nn.LSTM.forward`` calls: cuDNN on CUDA, oneDNN on
the CPU, the whole sequence in one call. Calling it with our own tensors lets
a layer hand it a modified hidden-to-hidden matrix (weight drop) or a zero
second bias (the one-bias plain LSTM) without per-step Python. The weights are
separate tensors, not one flat buffer as ``nn.LSTM.flatten_parameters`` makes,
so on CUDA cuDNN packs them per call (and PyTorch warns once that they are
"not part of single contiguous chunk of memory"): unavoidable with weight
drop, whose matrix is new on every call, and small next to the recurrence.
"""

import torch
from torch import nn


def lstm_layer(x, state, weight_ih, weight_hh, bias_ih, bias_hh):
    """Run one LSTM layer over a whole time-major sequence.

    Args:
        x: ``(time, batch, input)``.
        state: ``(h, c)``, each ``(batch, hidden)``.
        weight_ih: ``(4*hidden, input)``; weight_hh: ``(4*hidden, hidden)``;
            bias_ih, bias_hh: ``(4*hidden,)``; gates in the order i, f, g, o.

    Returns:
        ``(outputs, (h, c))``: ``(time, batch, hidden)`` in the compute dtype
        (lower under autocast) and the final state in the dtype of ``state``.
    """
    h0, c0 = state
    # The op's ``train`` flag only decides whether cuDNN keeps its backward
    # workspace; tying it to autograd (not module.training) lets evaluation-mode
    # gradients through, as dynamic evaluation needs.
    out, h, c = torch.lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)),
                           (weight_ih, weight_hh, bias_ih, bias_hh),
                           True, 1, 0.0, torch.is_grad_enabled(), False, False)
    return out, (h[0].to(h0.dtype), c[0].to(c0.dtype))


class LSTMLayer(nn.Module):
    """What the engine's LSTM layers share: shapes, initialisation, the fused call.

    Subclasses name their parameters and implement :meth:`weights`, the four
    tensors this call hands to :func:`lstm_layer`. Every weight and bias is
    initialised uniform(+-1/sqrt(hidden)), PyTorch's and the Keras engine's rule.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size

    def reset_parameters(self):
        bound = self.hidden_size ** -0.5
        for p in self.parameters(recurse=False):
            nn.init.uniform_(p, -bound, bound)

    def weights(self):
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` for this call."""
        raise NotImplementedError

    def forward(self, x, state):
        """``(time, batch, input)``, ``(h, c)`` -> ``(time, batch, hidden)``, ``(h, c)``."""
        return lstm_layer(x, state, *self.weights())

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


def assert_fused_lstm(model: nn.Module, probe: bool = True):
    """Raise ``RuntimeError`` unless ``model``'s LSTM layers run on cuDNN's fused kernel.

    Checks that PyTorch has cuDNN and it is enabled and that every LSTM weight
    is on a CUDA device; with ``probe`` it then runs the first layer on a
    two-step sequence under the profiler and requires ``aten::_cudnn_rnn``
    among the ops, which proves the dispatcher chose cuDNN for this dtype
    (which dtypes qualify depends on the PyTorch version; call it inside your
    autocast context to check that too). Call it once after moving the model
    to the GPU; on a machine without one it always raises.
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LSTMLayer)]
    problems = []
    if not layers:
        problems.append("the model has no LSTM layers")
    if not torch.backends.cudnn.is_available():
        problems.append("this PyTorch build has no cuDNN")
    elif not torch.backends.cudnn.enabled:
        problems.append("torch.backends.cudnn.enabled is False")
    off_gpu = [name for name, layer in layers if not all(p.is_cuda for p in layer.parameters())]
    if off_gpu:
        problems.append(f"LSTM weights not on a CUDA device: {', '.join(off_gpu)}")
    if not problems and probe:
        layer = layers[0][1]
        w = layer.weights()[0]
        x = w.new_zeros(2, 1, layer.input_size)
        h = w.new_zeros(1, layer.hidden_size)
        with torch.no_grad(), torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            layer(x, (h, h))
        ran = sorted({e.name for e in prof.events() if "lstm" in e.name or "rnn" in e.name})
        if "aten::_cudnn_rnn" not in ran:
            problems.append(f"in {w.dtype} the probe ran {ran}, not aten::_cudnn_rnn")
    if problems:
        raise RuntimeError("the fused cuDNN LSTM will not run: " + "; ".join(problems))
