"""The ``mosbench`` command: every pipeline stage, runnable without Snakemake.

``mosbench download|tokenise|train|evaluate|aggregate``, plus ``params`` (a
preset's parameter count), ``rank`` (the softmax-bottleneck analysis) and
``replay-tracking`` (MLflow calls kept during a tracking outage) and ``plan`` (the jobs
of a study and their cost, before submitting); each reads the same
config file as the workflow and writes where the workflow would
(:mod:`mosbench.paths`). ``train``, ``evaluate``, ``params`` and ``rank`` take
``--framework`` (default tensorflow). User errors print one clear line and exit with 2.
A stage that fails leaves none of its outputs, not even the previous run's, as
under Snakemake (:func:`mosbench.io.all_or_nothing`).
"""

import argparse
import glob
import sys
from pathlib import Path

from mosbench import paths
from mosbench.config import check_gpus, load_config, model_names, preset, source_of
from mosbench.engines import FRAMEWORKS
from mosbench.errors import PAUSED_EXIT_CODE, MosbenchError, TrainingPaused
from mosbench.io import all_or_nothing

DEFAULT_CONFIG = Path("config/config.yaml")


def _download(args, config):
    from mosbench.data.download import download_corpus
    from mosbench.data.synthetic import generate_synthetic

    if args.source not in config["sources"]:
        allowed = sorted(config["sources"])
        raise MosbenchError(f"unknown source '{args.source}'; allowed: {allowed}")
    source = config["sources"][args.source]
    raw_dir = paths.RAW.format(source=args.source)
    if source["kind"] == "synthetic":
        meta = generate_synthetic(args.source, source, raw_dir)
        print(f"best achievable perplexity of {args.source}: {meta['optimal_ppl']:.3f}")
    else:
        cache_dir = paths.DOWNLOAD_CACHE.format(source=args.source)
        download_corpus(args.source, source, raw_dir, cache_dir)
    print(f"wrote {raw_dir}")


def _tokenise(args, config):
    from mosbench.data.tokenise import tokenise

    source, _ = source_of(config, args.dataset)
    out = paths.DATA.format(dataset=args.dataset)
    dataset = config["datasets"][args.dataset]
    meta = tokenise(paths.RAW.format(source=source), out, dataset["subset"], dataset["vocab_size"])
    print(f"wrote {out}: tokens {meta['tokens']}, vocabulary {meta['vocab_size']}")


def _vocab_size(config, dataset):
    """From the tokenised data when it exists, else from the config's expectation."""
    from mosbench.data.tokenise import read_metadata

    vocab = Path(paths.DATA.format(dataset=dataset)) / "vocab.parquet"
    if vocab.exists():
        return read_metadata(vocab)["vocab_size"]
    source_of(config, dataset)  # a clear error for an unknown dataset
    expected = config["datasets"][dataset]["vocab_size"]
    if expected is None:
        raise MosbenchError(f"no vocabulary size for '{dataset}': tokenise it first "
                            f"(mosbench tokenise {dataset}) or set datasets.{dataset}.vocab_size")
    return expected


def _params(args, config):
    from mosbench.engines import load_engine

    vocab_size = _vocab_size(config, args.dataset)
    hparams = preset(config, args.dataset, args.model)
    engine = load_engine(args.framework)
    engine.build(args.model, vocab_size, hparams)
    print(f"{args.model} on {args.dataset} in {args.framework} (vocabulary {vocab_size:,}): "
          f"{engine.n_params:,} parameters")
    for name, array in engine.weights().items():
        print(f"  {name:60s} {str(tuple(array.shape)):>16s}")
    print(engine.n_params)


def _rank(args, config):
    from mosbench.data.tokenise import load_split
    from mosbench.evaluation.evaluate import load_trained
    from mosbench.evaluation.rank import logprob_rank

    train_dir, _ = _run_dirs(args)
    hparams = preset(config, args.dataset, args.model)
    ids, meta = load_split(paths.DATA.format(dataset=args.dataset), "test")
    engine = load_trained(train_dir, args.model, meta["vocab_size"], hparams,
                          framework=args.framework, gpus=args.gpus)
    contexts = args.contexts or hparams["rank_contexts"]
    rank, rows = logprob_rank(engine, ids, contexts, hparams["eval_batch_size"],
                              hparams["bptt"])
    print(f"rank of the {rows} x {meta['vocab_size']} log-probability matrix: {rank}")


def _run_dirs(args):
    run = dict(framework=args.framework, dataset=args.dataset, model=args.model,
               seed=args.seed, gpus=args.gpus)
    return paths.TRAIN.format(**run), paths.EVALUATE.format(**run)


def _train(args, config):
    from mosbench.training.job_lock import JobLock
    from mosbench.training.train import SUMMARY, WEIGHTS, train

    check_gpus(config, args.gpus)
    hparams = preset(config, args.dataset, args.model)  # a bad name stops before any folder
    train_dir, _ = _run_dirs(args)
    # As under Snakemake: a failed (or paused) rerun leaves no outputs, not the previous
    # run's; the checkpoint is not an output and stays. The code hash: train computes it.
    # The job's lock first: a second trainer of the job stops before it deletes anything.
    with JobLock(train_dir), all_or_nothing(Path(train_dir) / WEIGHTS,
                                            Path(train_dir) / SUMMARY):
        summary = train(paths.DATA.format(dataset=args.dataset), train_dir,
                        framework=args.framework, dataset=args.dataset, model_name=args.model,
                        seed=args.seed, gpus=args.gpus,
                        hparams=hparams,
                        experiment=config["mlflow"]["experiment"], threads=config["threads"],
                        config_snapshot=config, prices=config["cost"],
                        engine_options=config["engines"].get(args.framework))
    if "reason" in summary:  # diverged: an outcome, so exit status 0 (as under Snakemake)
        print(f"wrote {train_dir}; {summary['outcome']}: {summary['reason']}")
        return
    print(f"wrote {train_dir}; best valid loss {summary['best_valid_loss']:.4f}")


def _evaluate(args, config):
    from mosbench.evaluation.evaluate import evaluate

    train_dir, eval_dir = _run_dirs(args)
    metrics_path = f"{eval_dir}/metrics.json"
    with all_or_nothing(metrics_path):  # a failed rerun leaves no metrics, not the last run's
        metrics = evaluate(paths.DATA.format(dataset=args.dataset), train_dir, metrics_path,
                           model_name=args.model,
                           hparams=preset(config, args.dataset, args.model),
                           experiment=config["mlflow"]["experiment"], gpus=args.gpus,
                           threads=config["threads"], framework=args.framework,
                           engine_options=config["engines"].get(args.framework))
    if "reason" in metrics:  # a diverged run: nothing was scored
        print(f"wrote {eval_dir}; not scored: training {metrics['outcome']}")
        return
    print(f"valid ppl {metrics['best_valid_ppl']:.2f}, test ppl {metrics['test_ppl']:.2f}")


def _aggregate(args, config):
    from mosbench.reporting.aggregate import aggregate
    from mosbench.study import comparison_settings

    comparison = comparison_settings(config)  # the baseline, primary GPUs, margins

    def found(template, name):  # every run's file, whatever its framework, dataset, ...
        pattern = template.format(framework="*", dataset="*", model="*", seed="*", gpus="*",
                                  scaling="*")
        return sorted(glob.glob(f"{pattern}/{name}"))

    if args.partial:  # the config's grid, what has its files; the rest listed with why
        from mosbench.reporting.excluded import partial_inputs

        inputs = partial_inputs(config)
        written = aggregate(inputs.pop("train_files"), inputs.pop("metrics_files"),
                            paths.AGGREGATE, prices=config["cost"],
                            reference=config["reference"], comparison=comparison, **inputs)
        for row in inputs["missing"]:
            print(f"not in the report: {paths.RUN.format(**row)}: {row['outcome']}: "
                  f"{row['reason']}")
    else:
        written = aggregate(found(paths.TRAIN, "train.json"),
                            found(paths.EVALUATE, "metrics.json"), paths.AGGREGATE,
                            prices=config["cost"], reference=config["reference"],
                            probe_files=found(paths.PROBE, "probe.json"),
                            comparison=comparison)
    for path in written.values():
        print(f"wrote {path}")


def _plan(args, config):
    from mosbench.plan import plan, profile_settings, report

    if args.configfile is not None:  # Snakemake's spelling, so the README's commands match
        config = load_config(args.configfile)
    retries, runtime = profile_settings(args.profile)
    rules, warnings = plan(config, retries=retries, results=args.results,
                           default_runtime_min=runtime)
    origin = args.configfile or args.config
    print("\n".join(report(rules, warnings, config, retries=retries, origin=origin)))


def _replay_tracking(args, config):
    from mosbench.tracking.tracker import replay

    replay(args.paths, uri=args.tracking_uri)


def _nonnegative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _add_framework(parser):
    parser.add_argument("--framework", choices=FRAMEWORKS, default=None,
                        help="the framework whose engine runs it: %(choices)s "
                             "(default: the first of the config's run.frameworks)")


def _one_of(names, key):
    """The allowed values for a help text; ``key`` says where they come from if unknown."""
    return ", ".join(names) if names else f"a name under `{key}` in the config file"


def _config_names(path):
    """Data sets and sources of the config file ``path``, for the help; None if unreadable.

    The help must work with a broken config too: the command itself then says what is wrong.
    """
    try:
        config = load_config(path)
    except MosbenchError:
        return None, None
    return sorted(config["datasets"]), sorted(config["sources"])


def _add_run(parser, datasets, seed=True):
    """The positional arguments naming a run: dataset and model (and --seed, --gpus)."""
    parser.add_argument("dataset", help=f"the data set: {_one_of(datasets, 'datasets')}")
    parser.add_argument("model", help=f"the model: {_one_of(model_names(), 'presets')}")
    if seed:
        parser.add_argument("--seed", type=_nonnegative_int, required=True,
                            help="the run's random seed (run.seeds)")
        parser.add_argument("--gpus", type=_nonnegative_int, default=0,
                            help="GPUs the run uses, 0 for the CPU (default: %(default)s)")


def build_parser(config_path=DEFAULT_CONFIG):
    """The command's parser; ``config_path``'s data sets and sources are listed in the help."""
    datasets, sources = _config_names(config_path)
    parser = argparse.ArgumentParser(prog="mosbench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, type=Path,
                        help="config file (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command",
                                help="the stage to run (`mosbench COMMAND --help` for its own)")

    p = sub.add_parser("download", help="download and check (or generate) a raw corpus")
    p.add_argument("source", help=f"the corpus: {_one_of(sources, 'sources')}")
    p.set_defaults(func=_download)

    p = sub.add_parser("tokenise", help="tokenise a data set to Parquet")
    p.add_argument("dataset", help=f"the data set: {_one_of(datasets, 'datasets')}")
    p.set_defaults(func=_tokenise)

    for name, func, text in (("train", _train, "train one model"),
                             ("evaluate", _evaluate, "evaluate one trained model")):
        p = sub.add_parser(name, help=text)
        _add_run(p, datasets)
        _add_framework(p)
        p.set_defaults(func=func)

    p = sub.add_parser("params", help="build a preset and print its parameter count")
    _add_run(p, datasets, seed=False)
    _add_framework(p)
    p.set_defaults(func=_params)

    p = sub.add_parser("rank", help="rank of a trained model's log-probability matrix")
    _add_run(p, datasets)
    p.add_argument("--contexts", type=_nonnegative_int, default=None,
                   help="rows of the matrix (default: the preset's rank_contexts)")
    _add_framework(p)
    p.set_defaults(func=_rank)

    p = sub.add_parser("aggregate", help="tables and plots over every evaluated run")
    p.add_argument("--partial", action="store_true",
                   help="report the runs of the config's grid that have their files, and list "
                        "each other run with the last error of its job's log (when jobs "
                        "failed after their retries and Snakemake cannot run the aggregate)")
    p.set_defaults(func=_aggregate)

    p = sub.add_parser("plan", help="the jobs of a study and what they cost, before submitting")
    p.add_argument("--configfile", type=Path, default=None,
                   help="the study's config file (default: --config)")
    p.add_argument("--profile", type=Path, default=Path("profiles/slurm"),
                   help="the Snakemake profile it will run under, for its retries and default "
                        "time limit (default: %(default)s)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="earlier runs and probes whose epoch times replace the published "
                        "ones (default: %(default)s)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("replay-tracking", help="send MLflow calls that jobs kept while the "
                       "tracking store was unreachable (idempotent)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="a train or evaluate job's folder, or its tracking-spool.jsonl")
    p.add_argument("--tracking-uri", metavar="URI", default=None,
                   help="the tracking store to deliver to (default: $MLFLOW_TRACKING_URI; never "
                        "the one a spool names). Credentials: MLFLOW_TRACKING_USERNAME and "
                        "MLFLOW_TRACKING_PASSWORD, not the URI (a command line is visible to all)")
    p.set_defaults(func=_replay_tracking)
    return parser


def _config_argument(argv):
    """The --config of ``argv`` (before the full parser exists: it lists the file's names)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config", default=DEFAULT_CONFIG, type=Path)
    return early.parse_known_args(argv)[0].config


def main(argv=None):
    args = build_parser(_config_argument(argv)).parse_args(argv)
    try:
        config = load_config(args.config)
        if vars(args).get("framework", "") is None:
            args.framework = config["run"]["frameworks"][0]
        args.func(args, config)
    except MosbenchError as exc:
        print(f"mosbench: error: {exc}", file=sys.stderr)
        return 2
    except TrainingPaused as exc:
        print(f"mosbench: paused: {exc}", file=sys.stderr)
        return PAUSED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
