"""The one exception type that the command line turns into a clear message.

Anything a user can cause (a bad config value, a corrupt download, a missing
file) raises :class:`MosbenchError` with a message that names the input and
what was expected; the ``mosbench`` command prints it and exits with status 2
instead of a traceback.
"""


class MosbenchError(Exception):
    """An error caused by the user's input, with a message meant for them."""
