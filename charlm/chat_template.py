"""Chat templates: a conversation written out as the text a character model continues.

As Hugging Face does it: a Jinja template (`chat_template.jinja` in the model directory) renders
`messages`, `add_generation_prompt`, `bos_token` and `eos_token` (both empty: a character model has
no special tokens), `raise_exception` and the caller's own variables. It renders in jinja2's
immutable sandbox, which keeps a template away from Python's internals; `charlm.template_limits`
keeps one from taking the machine (time, the text it writes, the sizes its operations reach).

A model directory may also hold `generation_config.json`, whose `stop_strings` (Hugging Face's
name) end a reply unless the request sets its own: a play's speech ends at its blank line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import Template, TemplateError, TemplateSyntaxError

from charlm.template_limits import LIMITED, TemplateLimitError, TemplateTimeout, within_limits

TEMPLATE_FILE = "chat_template.jinja"
GENERATION_CONFIG_FILE = "generation_config.json"
BUNDLED_DIR = Path(__file__).parent / "chat_templates"  # templates by name: play, verse


class ChatTemplateError(Exception):
    """A template cannot be read, compiled or rendered; the message says which and why."""


class ChatTemplateTimeout(ChatTemplateError):
    """Rendering passed its deadline (a caller may try again with a longer one, elsewhere)."""


class RaisedByTemplate(Exception):
    """The template called raise_exception(message): the conversation is one it refuses."""


def raise_exception(message: str) -> NoReturn:
    raise RaisedByTemplate(message)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    source: str
    origin: str  # where it came from, for messages: a file, or "the request's chat_template"
    template: Template
    stop: tuple[str, ...] = ()  # the reply's default stop strings

    @classmethod
    def compile(cls, source: str, origin: str, stop: tuple[str, ...] = ()) -> ChatTemplate:
        try:
            return cls(source, origin, LIMITED.from_string(source), stop)
        except TemplateError as exc:
            line = f" (line {exc.lineno})" if isinstance(exc, TemplateSyntaxError) else ""
            raise ChatTemplateError(f"{origin} is not a valid Jinja template{line}: {exc.message}") from None
        except (RecursionError, SyntaxError, MemoryError) as exc:  # nested past what Python compiles
            raise ChatTemplateError(f"{origin} cannot be compiled: {type(exc).__name__}: {exc}") from None

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool, variables: dict[str, Any],
               timeout_s: float, max_chars: int) -> str:
        """The prompt; ChatTemplateError names what went wrong (the template's own message for
        raise_exception, the limit it passed, or the error inside it)."""
        context = {**variables, "messages": messages, "add_generation_prompt": add_generation_prompt,
                   "bos_token": "", "eos_token": "", "raise_exception": raise_exception}
        try:
            return within_limits(self.template, context, timeout_s, max_chars)
        except RaisedByTemplate as exc:
            raise ChatTemplateError(f"{self.origin} refused the conversation: {exc}") from None
        except TemplateTimeout as exc:
            raise ChatTemplateTimeout(f"{self.origin}: {exc}") from None
        except TemplateLimitError as exc:
            raise ChatTemplateError(f"{self.origin}: {exc}") from None
        except RecursionError:
            raise ChatTemplateError(f"{self.origin} recursed too deeply") from None
        except Exception as exc:  # whatever the template's own code raised: its fault, not the server's
            raise ChatTemplateError(f"{self.origin} failed: {type(exc).__name__}: {exc}") from None


def read_template(path: Path, stop: tuple[str, ...] = ()) -> ChatTemplate:
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ChatTemplateError(f"cannot read chat template {path}: {exc}") from None
    return ChatTemplate.compile(source, str(path), stop)


def template_path(name_or_path: str | Path) -> Path:
    """A bundled template by name (`play`, `verse`), or a file."""
    bundled = BUNDLED_DIR / f"{name_or_path}.jinja"
    if isinstance(name_or_path, str) and "/" not in name_or_path and bundled.is_file():
        return bundled
    return Path(name_or_path)


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.jinja"))


def template_files(name_or_path: str | Path) -> dict[str, str]:
    """The files that give a model directory a chat template: chat_template.jinja, and for a bundled
    template its generation_config.json (the reply's default stop); ChatTemplateError when the
    template cannot be read or compiled."""
    path = template_path(name_or_path)
    files = {TEMPLATE_FILE: read_template(path).source}
    config = path.with_suffix(".json")
    if path.parent == BUNDLED_DIR and config.is_file():
        files[GENERATION_CONFIG_FILE] = config.read_text(encoding="utf-8")
    return files


def default_stop(directory: Path) -> tuple[str, ...]:
    """generation_config.json's stop_strings (a string or a list), or none."""
    path = directory / GENERATION_CONFIG_FILE
    if not path.is_file():
        return ()
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ChatTemplateError(f"cannot read {path}: {exc}") from None
    stops = config.get("stop_strings") if isinstance(config, dict) else None
    stops = [stops] if isinstance(stops, str) else stops or []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ChatTemplateError(f"{path}: stop_strings must be a non-empty string or a list of them")
    return tuple(stops)


def check_template_file(path: Path) -> None:
    """For settings: ValueError unless `path` is a readable template."""
    try:
        read_template(path)
    except ChatTemplateError as exc:
        raise ValueError(str(exc)) from None
