"""The `charlm` command: subcommands are found through the `charlm.commands` entry points.

`charlm` itself provides `generate`; `training` adds `train` and `eval`, and
`service` adds `serve`. Discovering them by entry point keeps this package a
leaf that never imports the packages built on it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import entry_points

import torch

from charlm.checkpoint import ModelDirError, load_model
from charlm.generation import generate
from charlm.sampling import SamplingParams
from charlm.vocab import UnknownCharactersError


class CommandError(Exception):
    """A user error: printed as one line to stderr, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="charlm", description="Character-level language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in sorted(entry_points(group="charlm.commands"), key=lambda e: e.name):
        entry.load()(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except CommandError as exc:
        print(f"charlm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"charlm {args.command}: interrupted", file=sys.stderr)
        return 130


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available (default: auto)")


def resolve_device(requested: str) -> torch.device:
    """The torch device for --device auto|cpu|cuda; refuses cuda without CUDA."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda was requested but CUDA is not available")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def add_generate_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("generate", help="sample text from a model directory",
                                 description="Print the prompt, then characters as the model produces them.")
    parser.add_argument("--model", required=True, help="model directory, e.g. models/shakespeare-gpt")
    parser.add_argument("--prompt", default="", help="text to continue (default: the start character)")
    parser.add_argument("--max-new-tokens", type=int, default=500, help="characters to generate (500)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely characters; 0: off")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1.0: off")
    parser.add_argument("--min-p", type=float, default=0.0,
                        help="keep characters at least this share as likely as the most likely; 0: off")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="> 1 makes characters already in the prompt or output less likely; 1: off")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    add_device_argument(parser)
    parser.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 0:
        raise CommandError("--max-new-tokens must be >= 0")
    try:
        params = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed, min_p=args.min_p,
                                repetition_penalty=args.repetition_penalty)
        loaded = load_model(args.model, device=resolve_device(args.device))
        loaded.vocab.encode(args.prompt)  # fail before printing anything
        characters = generate(loaded.model, loaded.vocab, args.prompt, args.max_new_tokens, params,
                              loaded.path)
        sys.stdout.write(args.prompt)
        for generated in characters:
            sys.stdout.write(generated.char)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except (ValueError, ModelDirError, UnknownCharactersError) as exc:
        raise CommandError(str(exc)) from None
    except BrokenPipeError:  # the reader left (`| head`): stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python flushes stdout at exit)
    return 0
