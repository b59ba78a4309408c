"""The decoder's loss fused for memory: ``-log softmax(h W^T + b)[target]`` per row.

The (rows, vocab) logits are the largest tensors of a step (tokens x K x
vocab under MoS), so what matters is how many of them exist and how often
each is read. ``F.cross_entropy`` on materialised logits writes the logits,
their log-softmax, a zero-filled gradient of that and the gradient of the
logits: four such tensors per step, each a fresh allocation (on a CPU, fresh
pages too). Here:

* forward: one logits tensor; block by block, while a block is in cache, the
  bias is added, the target's logit picked and the block turned into
  ``exp(logits - max)`` in place, whose row sums give the log-sum-exp.
  Without autograd (evaluation) not even that tensor is formed: each block's
  logits come from their own matmul and are dropped;
* backward: the saved exps become the logits' gradient in place,
  ``softmax * g`` (one multiply: no second exp) minus ``g`` at the target,
  block by block (the bias gradient summed on the way), then the two matmuls
  of the linear map.

The matmuls run in the autocast dtype when autocast is on (as ``F.linear``
would), everything after them in float32.
"""

import torch

# Elements per block: 16 MB of float32 logits stays in a CPU's last-level cache
# between the ops on a block (and under glibc's 32 MB limit for reusing freed
# memory without new page faults); on a GPU blocks only need to fill the device.
CPU_BLOCK, GPU_BLOCK = 1 << 22, 1 << 26


def _blocks(rows, vocab, device):
    step = max(1, (GPU_BLOCK if device.type == "cuda" else CPU_BLOCK) // vocab)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _compute_dtype(device):
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) \
        else torch.float32


def _softmax_parts(block, bias, targets):
    """A float32 block of logits, in place: the bias added, then ``exp(logits - max)``.

    Returns the rows' NLL and ``1 / sum(exp(logits - max))``, which turns the
    block into the softmax (the backward needs nothing else: no second exp).
    """
    block.add_(bias)
    picked = block.gather(1, targets[:, None]).squeeze(1)
    peak = block.amax(dim=1, keepdim=True)
    total = block.sub_(peak).exp_().sum(dim=1)
    return peak.squeeze(1) + total.log() - picked, total.reciprocal_()


class LinearSoftmaxNLL(torch.autograd.Function):
    """``(hidden (N, d), weight (V, d), bias (V,), targets (N,))`` -> NLL ``(N,)`` float32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        dtype = _compute_dtype(hidden.device)
        h, w = hidden.to(dtype), weight.to(dtype)
        bias = bias.float()
        nll = hidden.new_empty(hidden.size(0), dtype=torch.float32)
        blocks = _blocks(hidden.size(0), weight.size(0), hidden.device)
        exps = (h @ w.t()).float()  # the logits, then exp(logits - max) in place
        scale = torch.empty_like(nll)
        for rows in blocks:
            nll[rows], scale[rows] = _softmax_parts(exps[rows], bias, targets[rows])
        ctx.save_for_backward(h, w, exps, scale, targets)
        ctx.dtypes, ctx.blocks, ctx.used = (hidden.dtype, weight.dtype), blocks, False
        return nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_nll):
        if ctx.used:
            raise RuntimeError("LinearSoftmaxNLL's backward reuses its logits' memory and "
                               "runs once per forward (no retain_graph)")
        ctx.used = True
        h, w, grad, scale, targets = ctx.saved_tensors
        grad_nll = grad_nll.float()
        grad_bias = None
        for rows in ctx.blocks:  # the exps become d nll / d logits: (softmax - onehot) * g
            block, g = grad[rows], grad_nll[rows, None]
            block.mul_(scale[rows, None] * g)
            block.scatter_add_(1, targets[rows, None], -g)
            if ctx.needs_input_grad[2]:
                part = block.sum(0)
                grad_bias = part if grad_bias is None else grad_bias.add_(part)
        grad = grad.to(h.dtype)
        grad_hidden = (grad @ w).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_weight = (grad.t() @ h).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, grad_bias, None


def linear_softmax_nll(hidden, weight, bias, targets):
    """Per-row NLL of ``targets`` under ``softmax(hidden @ weight.T + bias)``, float32.

    ``hidden`` ``(N, d)``, ``weight`` ``(V, d)``, ``bias`` ``(V,)``, ``targets``
    int64 ``(N,)``. Differentiable in the first three, once per forward.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (hidden, weight, bias)):
        return LinearSoftmaxNLL.apply(hidden, weight, bias, targets)
    # No gradient (evaluation): each block's logits from their own matmul, no (N, V) tensor.
    dtype = _compute_dtype(hidden.device)
    h, w, bias = hidden.to(dtype), weight.to(dtype), bias.float()
    nll = hidden.new_empty(hidden.size(0), dtype=torch.float32)
    for rows in _blocks(hidden.size(0), weight.size(0), hidden.device):
        nll[rows] = _softmax_parts((h[rows] @ w.t()).float(), bias, targets[rows])[0]
    return nll
