"""Copy weights between a Keras model and its PyTorch twin, by meaning.

Keras stores dense kernels as ``(in, out)`` and PyTorch as ``(out, in)``, so
every kernel is transposed on the way; the LSTM gate order (input, forget,
cell, output) is the same in both. Each copy checks that the pairing covers
every trainable weight on both sides, once, with matching shapes, so a
forgotten or doubled weight is an error rather than a silently random one.
"""

import numpy as np
import torch

from mosbench.engines.pytorch.models.awd_lstm import AWDLanguageModel
from mosbench.engines.pytorch.models.lstm import LSTMLanguageModel


def _lstm_pairs(keras_model, torch_model):
    pairs = [(keras_model.embedding.embeddings, torch_model.embedding.weight, False),
             (keras_model.decoder_bias, torch_model.decoder_bias, False)]
    for k, t in zip(keras_model.rnns, torch_model.rnns, strict=True):
        cell = k.cell
        pairs += [(cell.kernel, t.weight_ih, True), (cell.recurrent_kernel, t.weight_hh, True),
                  (cell.bias, t.bias, False)]
    if (keras_model.decoder is None) != (torch_model.decoder is None):
        raise ValueError("one model ties its decoder to the embedding and the other does not")
    if keras_model.decoder is not None:
        pairs.append((keras_model.decoder.kernel, torch_model.decoder.weight, True))
    return pairs


def _awd_pairs(keras_model, torch_model):
    pairs = [(keras_model.embedding.embeddings, torch_model.embedding.weight, False),
             (keras_model.head.bias, torch_model.head.decoder_bias, False)]
    for k, t in zip(keras_model.rnns, torch_model.rnns, strict=True):
        pairs += [(k.kernel, t.weight_ih, True), (k.recurrent_kernel, t.weight_hh_raw, True),
                  (k.input_bias, t.bias_ih, False), (k.recurrent_bias, t.bias_hh, False)]
    k_head, t_head = keras_model.head, torch_model.head
    if hasattr(k_head, "contexts") != hasattr(t_head, "contexts"):
        raise ValueError("the models have different output heads")
    if hasattr(k_head, "contexts"):
        k, t = k_head.contexts, t_head.contexts
        pairs += [(k.prior.kernel, t.prior.weight, True), (k.latent.kernel, t.latent.weight, True),
                  (k.latent.bias, t.latent.bias, False)]
    return pairs


def weight_pairs(keras_model, torch_model):
    """``[(keras_variable, torch_parameter, transposed)]`` covering both models exactly.

    The Keras model must be built (``build_model`` builds it). Raises
    ``ValueError`` on a kind, shape or coverage mismatch.
    """
    if isinstance(torch_model, LSTMLanguageModel):
        pairs = _lstm_pairs(keras_model, torch_model)
    elif isinstance(torch_model, AWDLanguageModel):
        pairs = _awd_pairs(keras_model, torch_model)
    else:
        raise ValueError(f"no weight mapping for {type(torch_model).__name__}")
    for variable, param, transposed in pairs:
        shape = tuple(variable.shape)[::-1] if transposed else tuple(variable.shape)
        if shape != tuple(param.shape):
            raise ValueError(f"{variable.path} {tuple(variable.shape)} cannot become a "
                             f"{tuple(param.shape)} parameter (transposed: {transposed})")
    keras_ids = [id(v) for v, _, _ in pairs]
    torch_ids = [id(p) for _, p, _ in pairs]
    if sorted(keras_ids) != sorted(id(v) for v in keras_model.trainable_weights):
        raise ValueError("the mapping does not cover every Keras weight exactly once")
    if sorted(torch_ids) != sorted(id(p) for p in torch_model.parameters()):
        raise ValueError("the mapping does not cover every PyTorch parameter exactly once")
    return pairs


def keras_to_torch(keras_model, torch_model):
    """Overwrite every parameter of ``torch_model`` with the matching Keras weight."""
    with torch.no_grad():
        for variable, param, transposed in weight_pairs(keras_model, torch_model):
            value = np.asarray(variable.numpy())
            param.copy_(torch.from_numpy(value.T if transposed else value))


def torch_to_keras(torch_model, keras_model):
    """Overwrite every weight of ``keras_model`` with the matching PyTorch parameter."""
    for variable, param, transposed in weight_pairs(keras_model, torch_model):
        value = param.detach().cpu().float().numpy()
        variable.assign((value.T if transposed else value).astype(variable.dtype))
