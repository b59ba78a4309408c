"""The one exception type that the command line turns into a clear message.

Anything a user can cause (a bad config value, a corrupt download, a missing
file) raises :class:`MosbenchError` with a message that names the input and
what was expected; the ``mosbench`` command prints it and exits with status 2
instead of a traceback.
"""


class MosbenchError(Exception):
    """An error caused by the user's input, with a message meant for them."""


class MissingInput(MosbenchError, FileNotFoundError):
    """An input file that an earlier stage writes is not there.

    Still a ``FileNotFoundError``, so code that handles a missing file goes on
    handling it; the command line prints its message like any MosbenchError.
    """

    def __str__(self):
        return self.args[0] if self.args else ""


# EX_TEMPFAIL from sysexits.h: "try again later". A paused training or
# evaluation job exits with it; running the same job again resumes where it was.
PAUSED_EXIT_CODE = 75


class TrainingPaused(Exception):  # noqa: N818 (a state, not a failure)
    """Training stopped early (SIGTERM or wall-time budget) after writing a checkpoint."""


class EvaluationPaused(TrainingPaused):
    """Evaluation stopped early (SIGTERM or wall-time budget) after saving its progress.

    A TrainingPaused, so what ends a paused job with PAUSED_EXIT_CODE ends this one too.
    """
