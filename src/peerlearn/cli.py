"""`peerlearn` on the command line. This module only parses arguments and prints results."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Optional

from peerlearn import startup_gc
from peerlearn.errors import ConfigError, PeerlearnError
from peerlearn.sql.cli import add_sql_parser, cmd_sql


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


# --------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from peerlearn.api import train
    from peerlearn.tables import format_summary

    if args.change and args.resume is None:
        raise ConfigError("--change continues a resumed run with a new setting (--resume RUN_DIR --change "
                          "key=value); a new run takes key=value overrides.")
    if args.resume is None and args.config is None and not args.overrides:
        raise PeerlearnError("train needs a CONFIG file (or key=value overrides of the defaults), "
                             "or --resume RUN_DIR to continue a run.")
    if args.resume is not None and (args.config is not None or args.overrides):
        raise PeerlearnError("--resume continues a run with its own saved config; give no CONFIG or overrides "
                             "(to continue with a new setting: --change key=value, recorded in the run).")
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}.")
    from peerlearn.sweeps import grid_override

    grid = dict(found for item in args.overrides if (found := grid_override(item)) is not None)
    if args.seeds is not None or grid:
        return cmd_train_sweep(args, grid)
    if args.jobs is not None:
        raise ConfigError("--jobs runs the runs of a sweep at once; give --seeds 0,1,2 or a grid (key=v1,v2).")
    if args.launcher == "local":
        return cmd_train_local(args)
    if args.nproc is not None:
        raise PeerlearnError("--nproc needs --launcher local (or start the processes with torchrun).")
    result = train(args.config, out=args.out, resume=args.resume, overrides=args.overrides, changes=args.change,
                   trust_code=args.trust_code)
    if os.environ.get("RANK", "0") == "0":  # in a distributed run only rank 0 reports
        print(format_summary(result.summary))
        print(f"\nrun directory: {result.run_dir}")
    return 0


def cmd_train_sweep(args: argparse.Namespace, grid: dict[str, list[str]]) -> int:
    """`peerlearn train CONFIG --seeds 0,1,2 [key=v1,v2 ...] [--jobs N]`: one run per seed and grid point."""
    from peerlearn.sweeps import grid_override, parse_seeds, sweep
    from peerlearn.tables import format_table

    if args.resume is not None or args.launcher != "none":
        raise ConfigError("--seeds and grids (key=v1,v2) start new runs in one process each; they do not combine "
                          "with --resume or --launcher (resume a sweep's run on its own: --resume RUN_DIR).")
    fixed = [item for item in args.overrides if grid_override(item) is None]
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None

    def report(event, run, plan):
        total = len(plan.runs)
        if event == "start":
            print(f"sweep run {run.index + 1}/{total} ({run.label}) started", flush=True)
            return
        if run.status != "done":
            print(f"sweep run {run.index + 1}/{total} ({run.label}) FAILED: {run.error}", flush=True)
            return
        best = _headline(run.summary or {})
        print(f"sweep run {run.index + 1}/{total} ({run.label}) done in {run.seconds:.1f} s{best}: "
              f"{plan.sweep_dir / run.run_dir}", flush=True)

    result = sweep(args.config, seeds=seeds, grid=grid, overrides=fixed, out=args.out, jobs=args.jobs or 1,
                   report=report, trust_code=args.trust_code)
    rows = [[run.index + 1, run.label, run.status, _headline(run.summary or {}).removeprefix(", "),
             run.run_dir or ""] for run in result.runs]
    print()
    print(format_table(["run", "settings", "status", "test top-1 %", "run directory"], rows))
    print(f"\nsweep folder: {result.sweep_dir} (runs recorded in sweep.json)")
    print(f"compare the runs: peerlearn report {result.sweep_dir}")
    failed = result.failed
    return 0 if not failed else next((run.exit_code for run in failed if run.exit_code), 1)


def _headline(summary: dict) -> str:
    """', ensemble 91.34' (or the single member's) test top-1 % of a summary, '' without one."""
    entry = summary.get("ensemble") or next(iter(summary.get("members", {}).values()), {})
    name = "ensemble" if summary.get("ensemble") else next(iter(summary.get("members", {})), "")
    top1 = (entry or {}).get("test", {}).get("top1")
    return "" if top1 is None else f", {name} {100 * top1:.2f}"


def cmd_train_local(args: argparse.Namespace) -> int:
    """`peerlearn train CONFIG --launcher local --nproc P`: P processes on this machine, one member each."""
    from peerlearn.config import load_config
    from peerlearn.engine.distributed import check_distributed_config, launch_local, local_train_args

    nproc = args.nproc or len(load_config(args.config, args.overrides).members if args.resume is None
                              else load_config(f"{args.resume}/config.yaml", import_code=False).members)
    if args.resume is None:  # report config errors once, before starting any process
        from peerlearn.recipes import get_recipe

        config = load_config(args.config, args.overrides)
        get_recipe(config.recipe).check_capabilities(config, nproc)
        check_distributed_config(config, nproc)
    timeout = (load_config(args.config, args.overrides) if args.resume is None
               else load_config(f"{args.resume}/config.yaml", import_code=False)).engine.dist_timeout
    return launch_local(local_train_args(args.config, args.overrides, args.out, args.resume, args.change,
                                         args.trust_code), nproc,
                        grace_seconds=min(timeout, 30.0))


def cmd_config(args: argparse.Namespace) -> int:
    """`peerlearn config [CONFIG] [key=value ...]`: the resolved, validated config as YAML."""
    from peerlearn.config import config_yaml, load_config

    config = load_config(args.config, args.overrides)
    print(config_yaml(config), end="")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    """`peerlearn layers [CONFIG] [key=value ...]`: every layer of each member that a forward hook can read."""
    from peerlearn.layer_list import layers
    from peerlearn.tables import format_table

    rows = layers(args.config, args.overrides, only=args.member)
    if args.stages:
        rows = [row for row in rows if row["stage"]]
    if args.json:
        _print_json(rows)
        return 0
    for index, member in enumerate(dict.fromkeys(row["member"] for row in rows)):
        own = [row for row in rows if row["member"] == member]
        print(f"{chr(10) if index else ''}member {member}: {own[0]['model']}, input {own[0]['input']}")
        table = []
        for row in own:
            notes = [note for note, flag in (("not reached", row["shape"] is None),
                                             (f"called {row['calls']}x: last call", row["calls"] > 1),
                                             ("overwritten in place: clone=True", row["in_place"])) if flag]
            table.append([row["path"], row["stage"], row["type"], row["shape"], "; ".join(notes)])
        print(format_table(["layer", "stage", "type", "output", "note"], table))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from peerlearn.demo import run_demo
    from peerlearn.tables import format_table, summary_rows

    print("peerlearn demo: two small CNNs on scikit-learn digits, trained independently, then with DML.\n")

    def report(recipe, result):
        print(f"  {recipe:<12} done in {result.summary['wall_seconds']:.1f} s  ({result.run_dir})")

    results = run_demo(out=args.out, epochs=args.epochs, report=report)
    rows = []
    for recipe, result in results.items():
        rows += summary_rows(result.summary, label=f"{recipe}: ")
    print()
    print(format_table(["cohort: member", "val top-1 %", "test top-1 %", "test top-5 %"], rows))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from peerlearn.data.files import list_sources, verify_source
    from peerlearn.tables import format_table

    if args.action == "verify":
        from peerlearn.config import DataConfig

        names = args.names or [name for name, spec in list_sources() if spec.files]
        failures = 0
        rows = []
        for name in names:
            config = DataConfig(source=name, root=args.root, download=False)
            for file, status in verify_source(name, config):
                rows.append([name, file, status])
                failures += status != "ok"
        print(format_table(["source", "file", "status"], rows))
        return 1 if failures else 0
    rows = [[name, spec.description] for name, spec in list_sources()]
    print(format_table(["source", "description"], rows))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from peerlearn.analysis_runner import analyze_run
    from peerlearn.tables import format_table

    result = analyze_run(args.run_dir, split=args.split, sigmas=args.sigmas, draws=args.draws, limit=args.limit,
                         members=args.member, tsne_items=args.tsne_items, perplexity=args.perplexity,
                         trust_code=args.trust_code, progress=args.progress)
    if args.json:
        _print_json(result)
        return 0
    rows = []
    for name, value in result["entropy"].items():
        mass = result["rank_mass"][name]
        curve = result["flatness"][name]
        rows.append([name, value, *[m for m in mass[:2]], *[curve[s]["mean"] for s in curve]])
    sigma_heads = [f"loss σ={s:g}" for s in next(iter(result["flatness"].values()))]
    print(f"analyses on the {result['split']} split ({result['items']} items)")
    print(format_table(["member", "entropy", "rank-1 mass", "rank-2 mass", *sigma_heads], rows))
    names = list(result["cka"])
    if len(names) > 1:
        print("\nlinear CKA between members' penultimate features")
        print(format_table(["member", *names], [[a, *[result["cka"][a][b] for b in names]] for a in names]))
    if result.get("tsne"):
        tsne = result["tsne"]
        print(f"\nt-SNE of {', '.join(tsne['members'])} on {tsne['items']} items: {tsne['file']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from peerlearn.evaluate.printing import format_evaluation
    from peerlearn.evaluate.runner import evaluate_run

    if args.label is not None and args.data is None:
        raise ConfigError("--label names the label column of --data (a CSV file); give --data too.")
    result = evaluate_run(args.run_dir, split=args.split, members=args.member, data=args.data,
                          label_column=args.label, trust_code=args.trust_code, progress=args.progress)
    if args.json:
        _print_json(result)
    else:
        print(format_evaluation(result))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """`peerlearn predict RUN_DIR INPUT`: one CSV row per input (predicted class and probability)."""
    from peerlearn.api import resolve_device
    from peerlearn.predict import predict_path, predictions_csv
    from peerlearn.safe_write import write_file
    from peerlearn.run_reader import read_run

    run = read_run(args.run_dir, device=str(resolve_device(args.device)), command="predict",
                   trust_code=args.trust_code)
    predictions = predict_path(run, args.input, member=args.member, batch_size=args.batch_size,
                               progress=args.progress)
    text = predictions_csv(predictions, every_class=args.probabilities)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    write_file(args.out, text, what="the predictions")  # atomic, never through a link (exit 4 on a full disk)
    counts: dict[str, int] = {}
    for name in predictions.predicted:
        counts[name] = counts.get(name, 0) + 1
    common = ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda kv: -kv[1])[:5])
    print(f"{len(predictions.names)} inputs predicted by {predictions.predicted_by} ({common}): {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from peerlearn.report import ReportOptions, build_report

    options = ReportOptions(split=args.split, limit=args.limit, flatness_items=args.flatness_items,
                            sigmas=tuple(args.sigmas), draws=args.draws, tsne_items=args.tsne_items,
                            tsne_members=args.tsne_member, progress=args.progress)
    path = build_report(args.run_dirs, out=args.out, options=options, title=args.title, figures=args.figures,
                        trust_code=args.trust_code)
    print(f"report written to {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from peerlearn.export import export_member

    result = export_member(args.run_dir, member=args.member, fmt=args.format, out=args.out,
                           exporter=args.exporter, check_items=args.check_items, progress=args.progress,
                           raw_input=args.raw_input, trust_code=args.trust_code)
    print(f"exported member {result.member!r} as {result.format}: {result.model_path}")
    print(f"files written: {', '.join(result.info['files'])}")
    print(f"preprocessing and class names: {result.info_path}")
    print(f"check on {result.check_items} {result.check_split} items: max |Δ logits| = {result.max_abs_diff:.3g} "
          f"(tolerance {result.tolerance:g})")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from peerlearn.evaluate.probe import probe_run
    from peerlearn.tables import format_table

    result = probe_run(args.run_dir, member=args.member, split=args.split, limit=args.limit, pool=args.pool, C=args.C,
                       trust_code=args.trust_code)
    if args.json:
        _print_json(result)
        return 0
    rows = [[r["name"], r["features"], 100 * r["train"], 100 * r["test"]] for r in result["depths"]]
    print(f"linear probe of member {result['member']!r} on {result['pool']}x{result['pool']}-averaged features "
          f"(scored on {result['split']})")
    print(format_table(["depth", "features", "train acc %", f"{result['split']} acc %"], rows))
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    """`peerlearn trust RUN_DIR ...`: record each run's files as they are now and sign them with your key."""
    from peerlearn.run_reader import code_references
    from peerlearn.trust import sign_run

    for run_dir in args.run_dirs:
        hashes = sign_run(run_dir)
        code = code_references(run_dir)
        print(f"trusted {run_dir}: recorded {', '.join(sorted(hashes))}")
        print(f"  code it names: {'; '.join(f'{ref} ({where})' for ref, where in code) if code else 'none'}")
    return 0


# --------------------------------------------------------------------------- parser
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "config": cmd_config,
    "layers": cmd_layers,
    "demo": cmd_demo,
    "datasets": cmd_datasets,
    "analyze": cmd_analyze,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "predict": cmd_predict,
    "export": cmd_export,
    "probe": cmd_probe,
    "sql": cmd_sql,
    "trust": cmd_trust,
}


def add_run_split_member_json(parser: argparse.ArgumentParser, split: str, json_help: str) -> None:
    """The arguments shared by the commands that read a finished run: RUN_DIR, --split, --member, --json."""
    parser.add_argument("run_dir", help="a finished run directory")
    parser.add_argument("--split", default=split, choices=["train", "val", "test"])
    parser.add_argument("--member", action="append", help="only this member (repeatable)")
    parser.add_argument("--json", action="store_true", help=json_help)
    add_progress(parser)
    add_trust_code(parser)


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--progress auto|on|off``: a bar on a terminal, a line every few seconds off it (peerlearn.progress)."""
    parser.add_argument("--progress", default="auto", choices=["auto", "on", "off"],
                        help="progress on standard error: auto (a bar on a terminal, else a line every few "
                             "seconds of slow work), on (a bar), off")


TRUST_CODE_HELP = ("import the code the run names (a package.module:callable model, a factory, a recipe class) "
                   "although it is not signed with your key; see `peerlearn trust` and docs/reliability.md")


def add_trust_code(parser: argparse.ArgumentParser, help: str = TRUST_CODE_HELP) -> None:
    parser.add_argument("--trust-code", action="store_true", help=help)


OVERRIDES_HELP = ("Overrides are dotted key=value pairs, before or after the options, e.g. optim.lr=0.05 "
                  "members.0.model=mlp; a list index one past the end, or +, appends an item: "
                  "members.+={name: c, model: mlp}.")
SWEEP_HELP = (" In train, a value list key=v1,v2,... sweeps a grid (quote a value to keep its comma: "
              "key='a,b'); --seeds 0,1,2 trains every point once per seed.")
COMMANDS_WITH_OVERRIDES = ("train", "config", "layers")


def add_config_and_overrides(parser: argparse.ArgumentParser) -> None:
    """``[CONFIG] [key=value ...]``: one positional list, split by ``split_config_and_overrides``."""
    parser.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                        help="YAML config file (optional: the defaults), then dotted config overrides")


def split_config_and_overrides(args: argparse.Namespace, extra: list[str]) -> None:
    """Set ``args.config`` (the one item that is not key=value, or None) and ``args.overrides`` from the
    positional items and the ones argparse left over because they came after an option."""
    items = [*args.items, *extra]
    files = [item for item in items if "=" not in item or item.endswith((".yaml", ".yml"))]
    if len(files) > 1:
        raise ConfigError(f"{args.command} takes one CONFIG file, got {len(files)}: {', '.join(files)}; "
                             "overrides are written key=value.")
    args.config = files[0] if files else None
    args.overrides = [item for item in items if item not in files]
    del args.items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peerlearn",
        description="Train networks with knowledge from other networks: deep mutual learning, distillation, "
                    "greedy layerwise and transfer learning.",
        epilog="exit codes: 0 success, 1 unusable run or file, 2 bad config or data, 3 training stopped "
               "(non-finite values), 4 resources (unwritable folder, full disk, run locked), 5 a distributed process "
               "died, 130/143 stopped by SIGINT/SIGTERM (a checkpoint saved, resume printed). "
               "See docs/reliability.md.",
    )
    from peerlearn import __version__

    parser.add_argument("--version", action="version", version=f"peerlearn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser("train", help="train a cohort from a YAML config",
                           description="Train the cohort a YAML config describes. " + OVERRIDES_HELP + SWEEP_HELP)
    add_config_and_overrides(train)
    train.add_argument("--out", default="runs", help="parent folder of the new run directory (default: runs)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--change", action="append", default=[], metavar="key=value",
                       help="with --resume: continue with this setting changed (repeatable; recorded in the run)")
    train.add_argument("--launcher", choices=["none", "local"], default="none",
                       help="local: start --nproc processes here, one member (or replica) each (like torchrun)")
    train.add_argument("--nproc", type=int, default=None, metavar="P",
                       help="processes for --launcher local (default: one per member)")
    train.add_argument("--seeds", default=None, metavar="S",
                       help="a sweep: one run per seed (0,1,2 or 0-4) into one sweep folder under --out; an "
                            "override with several values (mutual.weight=0.5,1,2) sweeps a grid, every point "
                            "with every seed (see docs/sweeps.md)")
    train.add_argument("--jobs", type=int, default=None, metavar="N",
                       help="train N runs of a sweep at once, each in its own process (default 1: one after "
                            "another)")
    add_trust_code(train, "let the runs this training reads (--resume RUN_DIR, transfer sources) name code "
                          "although they are not signed with your key")

    config = sub.add_parser("config", help="print the resolved, validated config as YAML",
                            description="Read CONFIG (or the defaults), apply the overrides, validate, and print "
                                        "the config a run would use, every default filled in. " + OVERRIDES_HELP)
    add_config_and_overrides(config)

    layers = sub.add_parser("layers", help="list the layers of a config's members that hooks can read",
                            description="Build the members of CONFIG (nothing is trained; on the CPU), pass one "
                                        "training input through each, and print every submodule path that "
                                        "feature and relational losses can read (path = its output, "
                                        "path:input = its input), its stage name, type and output shape for that "
                                        "one input. " + OVERRIDES_HELP)
    add_config_and_overrides(layers)
    layers.add_argument("--member", action="append", help="only this member (repeatable)")
    layers.add_argument("--stages", action="store_true", help="only the layers with a stage name")
    layers.add_argument("--json", action="store_true", help="print JSON rows instead of tables")

    demo = sub.add_parser("demo", help="independent vs DML on digits (no files needed, under a minute)",
                          description="Train two small CNNs on scikit-learn digits, independently and with "
                                      "Deep Mutual Learning, and print both cohorts' accuracy.")
    demo.add_argument("--out", default="runs", help="parent folder of the run directories (default: runs)")
    demo.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 25)")

    datasets = sub.add_parser("datasets", help="list dataset sources, or verify their files",
                              description="`peerlearn datasets` lists the sources; `peerlearn datasets verify "
                                          "[NAME ...] [--root DIR]` checks the official files' checksums.")
    datasets.set_defaults(action="list", names=[], root=None)
    actions = datasets.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="list the dataset sources")
    verify = actions.add_parser("verify", help="check the official files' MD5 sums")
    verify.add_argument("names", nargs="*", help="sources to verify (default: all with official files)")
    verify.add_argument("--root", default=None, help="data directory (default: $PEERLEARN_DATA)")

    analyze = sub.add_parser("analyze", help="entropy, rank mass, flatness, CKA and t-SNE of a finished run",
                             description="The DML paper's analyses on a finished run: mean posterior entropy, "
                                         "probability mass at ranks 1..5, the training loss after adding "
                                         "Gaussian noise of std σ to every parameter (flatness of the minimum), "
                                         "linear CKA between members' penultimate features and a t-SNE map of two "
                                         "members' features (saved as RUN_DIR/tsne.json).")
    add_run_split_member_json(analyze, split="train", json_help="print JSON instead of a table")
    analyze.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.005, 0.01, 0.02, 0.05])
    analyze.add_argument("--draws", type=int, default=3, help="noise draws per σ")
    analyze.add_argument("--limit", type=int, default=5000, help="use the first N items of the split")
    analyze.add_argument("--tsne-items", type=int, default=1000,
                         help="t-SNE of the first two members' features on the first N items (0: no t-SNE)")
    analyze.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")

    evaluate = sub.add_parser("evaluate", help="accuracy, P/R/F1, confusion, ROC-AUC (and CMC/mAP) of a run",
                              description="Evaluate a finished run on one split: top-1/top-5, per-class precision, "
                                          "recall and F1, macro F1, confusion matrix and one-vs-rest ROC-AUC of "
                                          "every member and the ensemble; on re-id runs (market1501) also CMC "
                                          "rank-1/5/10 and mAP per member and for the cohort's concatenated "
                                          "features. Saved as RUN_DIR/evaluation_<split>.json.")
    add_run_split_member_json(evaluate, split="test", json_help="print JSON instead of tables")
    evaluate.add_argument("--data", default=None, metavar="PATH",
                          help="score the run on other labelled data instead of a split: a folder of images with one "
                               "subfolder per class (image runs), or a CSV file with the run's feature columns and a "
                               "label column (tabular runs); saved as RUN_DIR/evaluation_data.json")
    evaluate.add_argument("--label", default=None, metavar="COLUMN",
                          help="with --data CSV: the label column (default: the one the run was trained with)")

    predict = sub.add_parser("predict", help="class probabilities of new images or table rows, as CSV",
                             description="Predict the class of each input with a run's ensemble (its students) or "
                                         "one member, after the run's own preprocessing (decoding, resize, "
                                         "normalisation). INPUT is an image file, a folder of images (searched "
                                         "recursively) or, for runs on tables, a CSV file with the run's feature "
                                         "columns. Each CSV row names the input, the predicted class and its "
                                         "probability. A wrong input (size, channels, missing columns, unreadable "
                                         "file) stops with exit 2, naming it.")
    predict.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    predict.add_argument("input", metavar="INPUT", help="an image file, a folder of images, or a CSV file")
    predict.add_argument("--out", default=None, help="CSV file to write (default: print the CSV)")
    predict.add_argument("--member", default=None, help="predict with this member (default: the run's ensemble)")
    predict.add_argument("--probabilities", action="store_true", help="add one column p_<class> per class")
    predict.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    predict.add_argument("--batch-size", type=int, default=256, help="inputs per batch (default 256)")
    add_progress(predict)
    add_trust_code(predict)

    report = sub.add_parser("report", help="one self-contained HTML page comparing finished runs",
                            description="Write one HTML file (plots embedded as PNG) with learning curves, a "
                                        "comparison table, confusion matrices, posterior entropy, flatness and "
                                        "t-SNE of members' features. Needs matplotlib (peerlearn[report]).")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    report.add_argument("--out", default=None, help="output file (default: RUN_DIR/report.html for one run, "
                                                    "./report.html for several)")
    report.add_argument("--title", default="peerlearn report")
    report.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="split of the confusion matrices, entropy and t-SNE (default: test)")
    report.add_argument("--limit", type=int, default=None, help="use only the first N items of that split "
                                                                "(default: all; the figures' titles say so)")
    report.add_argument("--figures", default="png", choices=["png", "svg", "pdf"],
                        help="also write every figure as SVG or PDF into REPORT_figures/ beside the page "
                             "(the page always embeds PNGs)")
    report.add_argument("--flatness-items", type=int, default=1000, help="training items of the flatness probe")
    report.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.05],
                        help="noise levels σ of the flatness probe")
    report.add_argument("--draws", type=int, default=2, help="noise draws per σ")
    report.add_argument("--tsne-items", type=int, default=500, help="items in the t-SNE picture")
    report.add_argument("--tsne-member", action="append", help="member in the t-SNE picture (repeatable; "
                                                               "default: the first two)")
    add_progress(report)
    add_trust_code(report)

    export = sub.add_parser("export", help="export one member as ONNX, TorchScript or safetensors",
                            description="Export a member of a finished run for inference. The model is checked "
                                        "against PyTorch on a batch of test items (ONNX with onnxruntime; max "
                                        "|Δ logits| must be < 1e-4). The preprocessing (mean/std, input size, "
                                        "channels) and the class names are saved beside it in a JSON file.")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    export.add_argument("--member", default=None, help="member to export (may be left out for a single member)")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    export.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export)")
    export.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "legacy"],
                        help="ONNX exporter: torch.export-based (dynamo, needs onnxscript), the TorchScript-"
                             "based legacy one, or auto (dynamo when onnxscript is installed, else legacy)")
    export.add_argument("--raw-input", choices=["nchw", "nhwc"], default=None,
                        help="images: the model takes the source's uint8 images in this layout and resizes and "
                             "normalises them itself, exactly as training did (onnx, torchscript)")
    export.add_argument("--check-items", type=int, default=64, help="test items of the output check")
    add_progress(export)
    add_trust_code(export)

    probe = sub.add_parser("probe", help="linear separability of each block's features (layerwise_cnn runs)",
                           description="Fit a linear classifier (logistic regression) on the spatially averaged "
                                       "output of every block of a finished run's network, and print its train and "
                                       "held-out accuracy per depth.")
    probe.add_argument("run_dir", help="a finished run directory")
    probe.add_argument("--member", default=None, help="member to probe (default: the first)")
    probe.add_argument("--split", default="test", choices=["val", "test"], help="held-out split to score on")
    probe.add_argument("--limit", type=int, default=5000, help="fit on the first N training items")
    probe.add_argument("--pool", type=int, default=2, help="average each map to POOL x POOL (default 2)")
    probe.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    probe.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_trust_code(probe)

    trust = sub.add_parser("trust", help="accept a run: record its files as they are and trust the code it names",
                           description="Sign RUN_DIR with your key after you looked at it (a run someone sent you, or "
                                       "one you edited on purpose): its files' SHA-256 are recorded again in "
                                       "RUN_DIR/signature.json, so later reads accept them, and the code it names "
                                       "(package.module:callable models, factories, recipe classes, listed below) "
                                       "may be imported without --trust-code. Runs you train are signed already. "
                                       "See docs/reliability.md.")
    trust.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to trust")

    add_sql_parser(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-") or args.command not in COMMANDS_WITH_OVERRIDES]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    startup_gc.pause()  # resumed once the run is prepared or read (peerlearn/startup_gc.py)
    try:
        if args.command in COMMANDS_WITH_OVERRIDES:
            split_config_and_overrides(args, extra)
        return COMMANDS[args.command](args)
    except PeerlearnError as error:
        print(f"peerlearn {args.command}: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        startup_gc.settle()


if __name__ == "__main__":
    raise SystemExit(main())
