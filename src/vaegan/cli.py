"""The `vaegan` command line; each stage entry is `run(config, args) -> int | None`.

Stage modules are imported only when their command runs (`COMMANDS` names them as text), because
importing them all (torch, torchvision, onnxruntime, mlflow) is what `vaegan --help` would cost
otherwise. Measured on the 2-core CI machine, median of 5 runs each: `vaegan --help` 0.18 s with
lazy stage imports, 12.9 s with every stage module imported first (`python -c pass`: 0.02-0.04 s;
under load, so absolute times are high but the ratio holds). The config module and yaml are imported
at the top: they cost about 0.09 s of that 0.18 s (0.10-0.11 s without them), well inside the
bench's 1 s target for `vaegan --help` (bench/orchestration.py).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from vaegan.config import Config, load_config
from vaegan.errors import VaeganError


@dataclass(frozen=True)
class Command:
    name: str
    target: str  # "module:function"
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="decoder ONNX file, or an MLflow model URI such as models:/vaegan-decoder@champion",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=64,
        help="number of images (default 64; up to 4,096 in a .png, 1,000,000 in a .npy)",
    )
    parser.add_argument(
        "--out",
        default="grid.png",
        help="file to write: .png = one grid image, .npy = uint8 array (n, 28, 28); its folder must exist "
        "(default grid.png)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior samples (default 0)")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI for models:/ URIs (default: MLFLOW_TRACKING_URI or tracking.uri)",
    )


def _promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the gate's decision and reasons without moving any alias",
    )


def _check_champion_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed", type=int, default=None, help="sampling seed (default: a fresh one, recorded in MLflow)"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="ONNX Runtime device (default auto: CUDA when really active, else CPU)",
    )


def _reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_uri",
        nargs="?",
        default="models:/vaegan-decoder@champion",
        help="the registered model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/TRAINING_RUN_ID "
        "(default models:/vaegan-decoder@champion)",
    )
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="compare environment, training code and params, predict the verdict; train nothing",
    )
    parser.add_argument(
        "--fid-tolerance",
        type=float,
        default=None,
        help="relative FID gap an `equivalent` rebuild may have (default 0.15)",
    )
    parser.add_argument(
        "--pr-tolerance",
        type=float,
        default=None,
        help="absolute precision and recall gap an `equivalent` rebuild may have (default 0.04)",
    )
    parser.add_argument("--repo", default=".", help="the model's git + DVC repository (default .)")
    parser.add_argument("--report", default=None, metavar="FILE", help="also write the verdict as markdown")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary worktree (its path is logged)"
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or tracking.uri)",
    )


COMMANDS: tuple[Command, ...] = (
    Command(
        "fetch",
        "vaegan.fetch:run",
        "put the dataset's four IDX files into data/raw/<dataset>/",
        "Fetch the raw IDX files according to data.source (auto, download, sample or a directory)\n"
        "and write data/raw/<dataset>/SOURCE.json with where they came from and their sha256.",
    ),
    Command(
        "prepare",
        "vaegan.prepare:run",
        "parse the IDX files into train/val/test uint8 arrays",
        "Validate and parse the raw IDX files, split the training set into train/val\n"
        "(data.val_fraction, data.seed), keep the official test set, and write data/prepared/.",
    ),
    Command(
        "evaluator",
        "vaegan.evaluator:run",
        "train the LeNet classifier whose features FID uses",
        "Train the small LeNet-style classifier (deterministic, evaluator.* params) whose\n"
        "penultimate-layer features define the Frechet LeNet Distance, and save it.",
    ),
    Command(
        "train",
        "vaegan.train:run",
        "train the VAE-GAN (or the `vae` baseline); resumes from last.pt",
        "Train with train.* and model.* params. Resumes automatically from\n"
        "train.checkpoint_dir/last.pt when its config matches. Under torchrun it runs DDP.",
    ),
    Command(
        "evaluate",
        "vaegan.evaluate:run",
        "compute FID, reconstruction metrics and the report",
        "Evaluate the trained model: FID against the test set, reconstruction metrics,\n"
        "precision/recall, writes metrics/eval.json and reports/eval.md with images.",
    ),
    Command(
        "export",
        "vaegan.export:run",
        "export encoder and decoder to ONNX and verify parity",
        "Export the encoder and decoder as ONNX graphs (dynamic batch), check them with\n"
        "onnx.checker and ONNX Runtime parity, and write metrics/export.json.",
    ),
    Command(
        "register",
        "vaegan.register:run",
        "register the ONNX models in MLflow as challenger",
        "Register the exported encoder and decoder in the MLflow model registry with their\n"
        "metrics and provenance tags, and point the `challenger` alias at them.",
    ),
    Command(
        "promote",
        "vaegan.promote:run",
        "move `champion` to the challenger if the gate passes",
        "Compare the challenger with the champion (registry.* params) and move the `champion`\n"
        "alias of encoder and decoder together when the gate passes.",
        add_arguments=_promote_arguments,
    ),
    Command(
        "sample",
        "vaegan.sample:run",
        "generate a PNG grid from a decoder with ONNX Runtime only",
        "Generate images from the prior with an exported decoder (a .onnx file or a models:/ URI),\n"
        "using onnxruntime and numpy alone, and write them as a PNG grid.",
        add_arguments=_sample_arguments,
    ),
    Command(
        "check-champion",
        "vaegan.check_champion:run",
        "score the registry's champion on the current test data; exit 1 on drift",
        "Load the champion encoder/decoder from the MLflow registry as ONNX (sha256 verified),\n"
        "evaluate them with ONNX Runtime on the current test data with a fresh seed, log to the\n"
        "MLflow experiment `check-champion`, and fail when FID degraded beyond\n"
        "registry.max_fid_drift relative to the FID recorded at promotion.",
        add_arguments=_check_champion_arguments,
    ),
    Command(
        "reproduce",
        "vaegan.reproduce:run",
        "rebuild a registered model from its record; say identical, equivalent or different",
        "Rebuild a registered model from what the registry records (git commit, params, data sha256,\n"
        "environment) in a temporary git worktree, through DVC, and compare: weights and ONNX graphs\n"
        "bitwise, then FID / precision / recall within a tolerance. The environment is compared first\n"
        "and the verdict predicted before any training. --set changes a recorded param for the\n"
        "rebuild (the verdict is then `different`, naming it, unless it only says where things run:\n"
        "tracking.*, registry.*, train.device, evaluate.device).\n"
        "Exit 0 identical or equivalent, 1 different, 2 cannot reproduce here.",
        add_arguments=_reproduce_arguments,
    ),
    Command(
        "params",
        "vaegan.cli:show_params",
        "print the resolved params (defaults + file + --set)",
        "Print the config the other commands would use, after params file and --set overrides.",
    ),
)


def show_params(config: Config, args: argparse.Namespace) -> int:
    """Print the resolved config as YAML."""
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaegan",
        description=(
            "Train, evaluate and ship a VAE-GAN (Larsen et al. 2016) on MNIST-like data.\n"
            "Each command is a stage of the DVC pipeline in dvc.yaml; `make run` chains them all."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `vaegan COMMAND --help` for a command's options.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--params",
        default="params.yaml",
        metavar="PATH",
        help="params file (default params.yaml; built-in defaults when it is absent)",
    )
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param, e.g. --set train.lr=0.001 (repeatable)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        cmd_parser = sub.add_parser(
            command.name,
            parents=[common],
            help=command.help,
            description=command.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command.add_arguments is not None:
            command.add_arguments(cmd_parser)
        cmd_parser.set_defaults(_command=command)
    return parser


def _resolve(target: str) -> Callable[..., int | None]:
    module_name, func_name = target.split(":")
    handler: Callable[..., int | None] = getattr(importlib.import_module(module_name), func_name)
    return handler


# Set in the re-executed process, so that it never re-executes again.
_FROM_CHECKOUT = "VAEGAN_FROM_CHECKOUT"


def experiment_checkout() -> Path | None:
    """The `src/` of the repository copy a DVC experiment runs in, when this process imported
    vaegan from elsewhere; else None.

    `dvc exp run --queue` / `--temp` run the stages in a temporary copy of the repository, but the
    `vaegan` on PATH imports the editable install of the user's checkout: a queued experiment would
    run whatever src/ holds when it starts, while DVC hashes the copy's. Under an experiment
    (`DVC_EXP_NAME`) whose working directory holds a whole package (`src/vaegan/__main__.py`) that
    is not the imported one, `main` re-executes itself on the copy's code.
    """
    if not os.environ.get("DVC_EXP_NAME") or os.environ.get(_FROM_CHECKOUT):
        return None
    source = Path.cwd() / "src"
    if not (source / "vaegan" / "__main__.py").is_file():
        return None
    if (source / "vaegan").resolve() == Path(__file__).resolve().parent:
        return None
    return source


def _run_from_checkout(source: Path, argv: Sequence[str]) -> None:
    """Replace this process by `python -m vaegan ARGV` importing the package under `source`."""
    python_path = os.pathsep.join(p for p in (str(source), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, _FROM_CHECKOUT: "1"}
    os.execve(sys.executable, [sys.executable, "-m", "vaegan", *argv], env)


def main(argv: Sequence[str] | None = None) -> int:
    source = experiment_checkout()
    if source is not None:
        _run_from_checkout(source, list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args._command
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        config = load_config(args.params, args.overrides)
        result = _resolve(command.target)(config, args)
    except VaeganError as exc:
        print(f"vaegan {command.name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"vaegan {command.name}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
