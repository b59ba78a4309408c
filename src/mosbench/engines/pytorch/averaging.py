"""The NT-ASGD iterate average in PyTorch: one shadow tensor per weight, updated in place.

``torch.optim.ASGD`` folds its own averaging into its update rule, and
``torch.optim.swa_utils.AveragedModel`` copies the whole module and keeps the
average there, while the procedure wants the job's model itself to hold the
average for validation and the best-weights file. So the uniform average
lives here: shadow tensors on the weights' device, updated with one fused
``_foreach_lerp_`` after each step, swapped into the model with two fused copies.
"""

import contextlib

import torch


class IterateAverage:
    """Uniform running average of ``params`` from its (re)start on.

    After ``n`` updates the average equals ``mean(w_1..w_n)`` of the weights
    seen by :meth:`update`, as PyTorch's ASGD with ``t0=0, lambd=0`` (the
    reference's). The count is a host integer, so an update never waits for
    the device.
    """

    def __init__(self, params):
        self.params = list(params)
        with torch.no_grad():
            self.averages = [p.detach().clone() for p in self.params]
        self.count = 0

    @torch.no_grad()
    def update(self):
        """Fold the current weights into the average (after each optimiser step)."""
        self.count += 1
        torch._foreach_lerp_(self.averages, [p.detach() for p in self.params], 1.0 / self.count)

    @torch.no_grad()
    def restart(self):
        """Restart from the current weights with a count of 0 (NT-ASGD's switch)."""
        torch._foreach_copy_(self.averages, [p.detach() for p in self.params])
        self.count = 0

    @contextlib.contextmanager
    def swapped_in(self):
        """Within the block the parameters hold the average; the iterates come back after."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            torch._foreach_copy_([p.detach() for p in self.params], self.averages)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.detach() for p in self.params], saved)
