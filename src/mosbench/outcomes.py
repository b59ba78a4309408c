"""How a training job ended, as its train.json says (key ``outcome``).

*finished*: trained to the end of its schedule. *diverged*: a training or
validation loss became NaN or infinite; that is a result of the experiment,
not a fault to retry (the same seed diverges again), so the job still ends
successfully and writes its outputs, marked, with the reason (key
``reason``). Evaluate scores only finished runs and the aggregate averages
only them, listing the others. train.json files written before the key
existed are of finished jobs.
"""

FINISHED = "finished"
DIVERGED = "diverged"


def outcome_of(record):
    """The outcome of a train.json (or metrics.json) record; finished when it has none."""
    return record.get("outcome", FINISHED)
