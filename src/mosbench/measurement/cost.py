"""The money cost of compute time, from configured hourly prices (config key `cost`)."""


def hourly_price(gpus, prices):
    """What an hour of a job costs: ``gpus`` GPU-hours, or one CPU-hour when gpus = 0."""
    return gpus * prices["gpu_hour"] if gpus else prices["cpu_hour"]


def cost(seconds, gpus, prices):
    """The price of ``seconds`` of a job on ``gpus`` GPUs (0: the CPU), in prices['currency']."""
    return seconds / 3600.0 * hourly_price(gpus, prices)
