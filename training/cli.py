"""`charlm train` and `charlm eval`."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from charlm.chat_template import bundled_names
from charlm.checkpoint import WEIGHTS_FILE, ModelDirError, load_model
from charlm.cli import CommandError, add_device_argument, resolve_device
from charlm.models import ARCHITECTURES
from charlm.scoring import default_stride
from charlm.vocab import UnknownCharactersError
from training.config import PRESETS, ConfigError, parse_assignment
from training.data import DataError, read_corpus
from training.evaluation import evaluate_text, loss_metrics
from training.session import RunSpec
from training.trainer import train

logger = logging.getLogger(__name__)
DEFAULT_EVAL_SEQ_LEN = 256  # for a model with no trained sequence length and no context limit


def add_train_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train", help="train a model on a UTF-8 text file",
        description="Train a model and write it to a model directory. Settings come from the preset "
        "(default: the architecture's own) and --set overrides.",
    )
    parser.add_argument("--data", required=True, type=Path, help="UTF-8 text file")
    parser.add_argument("--out", required=True, type=Path, help="model directory to write, e.g. models/NAME")
    parser.add_argument("--valid-data", type=Path, metavar="FILE",
                        help="UTF-8 text to validate on (default: the last val_fraction of --data)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), help="architecture")
    parser.add_argument("--preset", help=f"one of: {', '.join(PRESETS)}")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model or training setting (repeatable), e.g. --set max_iters=500")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace --out (at the first checkpoint)")
    parser.add_argument("--init-from", type=Path, metavar="MODEL_DIR",
                        help="start from a trained model's weights and vocabulary (fine-tuning): a new run "
                        "with the model's architecture and training settings, overridden by --set")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--events", type=Path, metavar="FILE",
                        help="append the run's progress, evaluations, checkpoints and end to FILE as JSON lines")
    parser.add_argument("--chat-template", metavar="NAME_OR_FILE",
                        help="give the model a chat template for /v1/chat/completions: a Jinja file, or a bundled "
                        f"one by name ({', '.join(bundled_names())}, which also set the reply's default stop)")
    add_device_argument(parser)
    parser.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    try:
        overrides = dict(parse_assignment(text) for text in args.settings)
        spec = RunSpec(
            data=args.data, out=args.out, architecture=args.arch, preset=args.preset, overrides=overrides,
            resume=args.resume, overwrite=args.overwrite, device=args.device,
            command=shlex.join(["charlm", *sys.argv[1:]]), progress=not args.no_progress,
            chat_template=args.chat_template, events=args.events, init_from=args.init_from,
            valid_data=args.valid_data,
        )
        with logging_redirect_tqdm():
            summary = train(spec)
    except (ConfigError, DataError, ModelDirError) as exc:
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        if (args.out / WEIGHTS_FILE).exists():
            logger.warning("interrupted; %s keeps the best checkpoint so far", args.out)
        raise
    if summary is None:
        logger.warning("no checkpoint was written: the validation loss was never finite")
        return 1
    if summary:
            logger.info("best val loss %.4f (%.3f bits/char) at iteration %d in %s",
                    summary["val_loss"], summary["val_bpc"], summary["iterations"], args.out)
    return 0


def add_eval_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval", help="score a model on a text file",
        description="Mean loss over every character of the file; prints loss, perplexity and bits per "
        "character. A GPT reads the file through a sliding window: windows of --seq-len characters, "
        "--stride apart, each scoring only what the window before did not, so every character past the "
        "first window sees at least seq-len - stride characters before it. Recurrent models carry their "
        "state through the whole file.",
    )
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--data", required=True, type=Path, help="UTF-8 text file")
    parser.add_argument("--seq-len", type=int, default=None, help="window length (default: as trained)")
    parser.add_argument("--stride", type=int, default=None, help="characters between windows (default: half the "
                        "window; the window's length: consecutive windows, where a window's first characters see "
                        "little)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_argument(parser)
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    try:
        loaded = load_model(args.model, device=device)
        ids = torch.from_numpy(loaded.vocab.encode(read_corpus(args.data)))
    except (DataError, ModelDirError, UnknownCharactersError) as exc:
        raise CommandError(str(exc)) from None
    training = loaded.info.get("training")
    trained_seq_len = training.get("seq_len") if isinstance(training, dict) else None
    context = loaded.model.context_size
    seq_len = args.seq_len or trained_seq_len or context or DEFAULT_EVAL_SEQ_LEN
    if seq_len < 1 or (context is not None and seq_len > context):
        raise CommandError(f"--seq-len must be between 1 and the model's context of {context or 'any'}")
    stride = default_stride(seq_len) if args.stride is None else args.stride
    if not 1 <= stride <= seq_len:
        raise CommandError(f"--stride must be between 1 and the window's {seq_len} characters")
    if len(ids) < 2:
        raise CommandError(f"{args.data} needs at least 2 characters to score")
    with logging_redirect_tqdm():
        loss = evaluate_text(loaded.model, ids, seq_len, stride, device, progress=not args.no_progress)
    metrics = loss_metrics(loss)
    reading = "the whole text (state carried)" if loaded.model.carries_state else \
        f"windows of {seq_len} every {stride}"
    print(f"loss {metrics['loss']:.4f}  perplexity {metrics['perplexity']:.3f}  "
          f"bits/char {metrics['bpc']:.4f}  ({len(ids):,} characters, {reading})")
    return 0
