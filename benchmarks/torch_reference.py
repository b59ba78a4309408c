"""An independent PyTorch implementation of the benchmark presets, written as a user would.

Plain, idiomatic PyTorch: ``nn.LSTM`` (PyTorch's fused CPU/cuDNN kernel),
weight drop by handing the dropped hidden-to-hidden matrix to that module
through ``torch.func.functional_call``, ``F.cross_entropy`` for the softmax
head, the MoS mixture in log space, ``clip_grad_norm_`` and ``torch.optim.SGD``.
Same shapes and semantics as the project's Keras models (time-major here, as
PyTorch's RNNs prefer): embedding dropout, locked dropout, AR/TAR, weight
decay, tied decoder, K experts. Used only by ``benchmarks/throughput.py``;
PyTorch is an optional extra (``pip install torch==2.13.0``).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def locked_dropout(x, rate, training):
    """One mask per sequence, shared over time: ``x`` is ``(time, batch, features)``."""
    if not training or rate == 0:
        return x
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - rate) / (1 - rate)
    return x * mask


def embedding_dropout(weight, tokens, rate, training):
    """Drop whole word types (rows of the embedding), scale the rest by 1/(1-rate)."""
    if training and rate > 0:
        keep = weight.new_empty(weight.size(0), 1).bernoulli_(1 - rate) / (1 - rate)
        weight = weight * keep
    return F.embedding(tokens, weight)


class TorchLSTMLanguageModel(nn.Module):
    """Zaremba-style LSTM: dropout on the embedding and after every layer, tied decoder."""

    def __init__(self, vocab_size, emsize, nhid, nlayers, dropout, init_range=0.1, **_):
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, emsize)
        nn.init.uniform_(self.encoder.weight, -init_range, init_range)
        self.rnn = nn.LSTM(emsize, nhid, nlayers, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(nhid, vocab_size)
        self.decoder.weight = self.encoder.weight  # tied
        nn.init.zeros_(self.decoder.bias)
        self.nhid, self.nlayers = nhid, nlayers

    def initial_state(self, batch_size, device):
        zeros = torch.zeros(self.nlayers, batch_size, self.nhid, device=device)
        return (zeros, zeros.clone())

    def loss(self, tokens, targets, state):
        """Mean NLL of ``targets`` (time, batch) and the state to carry on."""
        x = self.drop(self.encoder(tokens))
        out, state = self.rnn(x, state)
        logits = self.decoder(self.drop(out))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1)), state


class TorchAWDLanguageModel(nn.Module):
    """AWD-LSTM with a tied softmax or a Mixture-of-Softmaxes head."""

    def __init__(self, vocab_size, emsize, nhid, nhidlast, nlayers, dropout, dropouth,
                 dropouti, dropoute, wdrop, head, n_experts=1, dropoutl=0.0, alpha=0.0,
                 beta=0.0, init_range=0.1, **_):
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, emsize)
        nn.init.uniform_(self.encoder.weight, -init_range, init_range)
        sizes = [nhid] * (nlayers - 1) + [nhidlast]
        inputs = [emsize] + sizes[:-1]
        # PyTorch's default LSTM init is already the reference's uniform(+-1/sqrt(H)).
        self.rnns = nn.ModuleList(nn.LSTM(i, o) for i, o in zip(inputs, sizes, strict=True))
        self.sizes = sizes
        self.head = head
        if head == "mos":
            self.prior = nn.Linear(nhidlast, n_experts, bias=False)
            self.latent = nn.Linear(nhidlast, n_experts * emsize)
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size))
        self.n_experts, self.emsize = n_experts, emsize
        self.rates = dict(dropout=dropout, dropouth=dropouth, dropouti=dropouti,
                          dropoute=dropoute, wdrop=wdrop, dropoutl=dropoutl)
        self.alpha, self.beta = alpha, beta

    def initial_state(self, batch_size, device):
        return [(torch.zeros(1, batch_size, h, device=device),
                 torch.zeros(1, batch_size, h, device=device)) for h in self.sizes]

    def forward(self, tokens, states):
        """Log-probabilities ``(time*batch, vocab)``, new states, raw and dropped last output."""
        r, training = self.rates, self.training
        x = embedding_dropout(self.encoder.weight, tokens, r["dropoute"], training)
        x = locked_dropout(x, r["dropouti"], training)
        new_states = []
        for layer, (rnn, state) in enumerate(zip(self.rnns, states, strict=True)):
            # Weight drop: one DropConnect mask on W_hh per call, then the fused kernel.
            w_hh = F.dropout(rnn.weight_hh_l0, r["wdrop"], training)
            raw, state = functional_call(rnn, {"weight_hh_l0": w_hh}, (x, state))
            new_states.append(state)
            x = locked_dropout(raw, r["dropouth"], training) if layer < len(self.rnns) - 1 else raw
        dropped = locked_dropout(raw, r["dropout"], training)
        flat = dropped.view(-1, dropped.size(-1))
        if self.head == "softmax":
            logits = F.linear(flat, self.encoder.weight, self.decoder_bias)
            return F.log_softmax(logits, -1), new_states, (raw, dropped)
        latent = torch.tanh(self.latent(dropped))
        latent = locked_dropout(latent, r["dropoutl"], training)
        logits = F.linear(latent.view(-1, self.emsize), self.encoder.weight, self.decoder_bias)
        log_prior = F.log_softmax(self.prior(flat), -1)  # (N, K)
        expert = F.log_softmax(logits.view(flat.size(0), self.n_experts, -1), -1)
        return torch.logsumexp(expert + log_prior.unsqueeze(-1), 1), new_states, (raw, dropped)

    def loss(self, tokens, targets, states):
        log_probs, states, (raw, dropped) = self(tokens, states)
        nll = F.nll_loss(log_probs, targets.reshape(-1))
        if not self.training:
            return nll, states
        loss = nll
        if self.alpha:
            loss = loss + self.alpha * dropped.pow(2).mean()
        if self.beta:
            loss = loss + self.beta * (raw[1:] - raw[:-1]).pow(2).mean()
        return loss, states


def build(model_name, vocab_size, hparams):
    """The PyTorch model of a project model name and preset."""
    if model_name == "lstm":
        return TorchLSTMLanguageModel(vocab_size, **hparams)
    head = {"awd-lstm": "softmax", "awd-lstm-mos": "mos"}[model_name]
    return TorchAWDLanguageModel(vocab_size, head=head, **hparams)


def detach(states):
    if isinstance(states, tuple):
        return tuple(s.detach() for s in states)
    return [detach(s) for s in states]


class TorchSide:
    """Train and eval steps of one preset in PyTorch, on ``(batch, time)`` numpy windows."""

    def __init__(self, model_name, vocab_size, hparams, device="cpu"):
        self.device = torch.device(device)
        self.model = build(model_name, vocab_size, hparams).to(self.device)
        self.clip = hparams["clip"]
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=hparams["lr"],
                                         weight_decay=hparams.get("wdecay") or 0.0)
        self.states = {}

    def _state(self, batch_size):
        if batch_size not in self.states:
            self.states[batch_size] = self.model.initial_state(batch_size, self.device)
        return self.states[batch_size]

    def _tensors(self, inputs, targets):
        to = lambda a: torch.from_numpy(a.T.copy()).long().to(self.device)  # noqa: E731
        return to(inputs), to(targets)

    def train_step(self, inputs, targets):
        """Forward, backward, clip, update; returns the loss (synchronised)."""
        self.model.train()
        x, y = self._tensors(inputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss, state = self.model.loss(x, y, self._state(x.size(1)))
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.states[x.size(1)] = detach(state)
        return self._sync(loss)

    @torch.no_grad()
    def eval_step(self, inputs, targets):
        self.model.eval()
        x, y = self._tensors(inputs, targets)
        loss, state = self.model.loss(x, y, self._state(x.size(1)))
        self.states[x.size(1)] = state
        return self._sync(loss)

    def _sync(self, loss):
        value = loss.detach().item()  # waits for the device
        if not math.isfinite(value):
            raise FloatingPointError("PyTorch loss is not finite")
        return value

    def parameter_count(self):
        return sum(p.numel() for p in self.model.parameters())
