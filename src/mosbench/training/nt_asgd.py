"""Non-monotonically triggered averaged SGD (NT-ASGD, Merity et al. 2018): the trigger.

Train with plain SGD; once validation stops improving by the non-monotone
rule, keep taking SGD steps but also keep the uniform average of the iterates
from that point on, and validate and checkpoint with the average. The rule is
the procedure's; each engine keeps the average itself (``Engine.start_average``).
"""


def nonmono_triggered(previous_losses, loss, nonmono):
    """The reference's switch rule.

    Fires when more than ``nonmono`` validation losses came before this one
    and this one is worse than the best of all but the last ``nonmono``.
    """
    return len(previous_losses) > nonmono and loss > min(previous_losses[:-nonmono])
