"""Snakemake wrapper: measure one framework's data pipeline on one data set and device."""

from pathlib import Path

from mosbench.gpu_slots import assign_devices
from mosbench.io import redirect_output

redirect_output(snakemake.log[0])
w = snakemake.wildcards
assign_devices(int(w.device == "gpu"))  # this job's own GPU, before the framework loads

from mosbench.io import write_json  # noqa: E402
from mosbench.measurement.data_pipeline import data_pipeline_record  # noqa: E402

out = Path(snakemake.output.record)
settings = snakemake.params.settings
record = data_pipeline_record(w.framework, w.dataset, w.device, Path(snakemake.input.raw).parent,
                              Path(snakemake.input.train).parent,
                              batch_size=settings["batch_size"], bptt=settings["bptt"],
                              passes=settings["passes"], scratch_dir=out.parent,
                              threads=snakemake.threads)
write_json(out, record)
print({k: v for k, v in record.items() if k != "provenance"})
