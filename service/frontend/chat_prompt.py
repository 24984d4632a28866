"""From a conversation to the prompt a model continues: each model's chat template, read from its
directory (kept until its files change), the server's fallback, or the request's own when the
operator trusts those; rendered off the event loop, within the template limits."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Protocol

from charlm.chat_template import (
    GENERATION_CONFIG_FILE,
    TEMPLATE_FILE,
    ChatTemplate,
    ChatTemplateError,
    ChatTemplateTimeout,
    default_stop,
    read_template,
)
from service.frontend.errors import ServiceError
from service.frontend.models import ModelView
from service.frontend.schemas.chat import ChatMessage
from service.settings import Settings


class ChatOptions(Protocol):
    """How a request asks its conversation to be rendered (chat completions and /tokenize alike)."""

    add_generation_prompt: bool
    continue_final_message: bool
    chat_template: str | None
    chat_template_kwargs: dict[str, Any] | None


FileStamp = tuple[int, int] | None  # (size, mtime) of a file, None when absent
REQUEST_TEMPLATES_KEPT = 64
INLINE_S = 0.005  # how long a template may render on the event loop before it moves to a thread
INLINE_CHARS = 4096  # a longer conversation renders in a thread from the start


def stamp(path: Path) -> FileStamp:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


@dataclasses.dataclass(frozen=True)
class ChatPrompt:
    text: str
    stop: tuple[str, ...]  # the reply's default stop strings (the model's), used when the request sets none


def no_template(model: str) -> ServiceError:
    return ServiceError(422, f"model {model} has no chat template, so it cannot answer a chat: add a "
                        f"{TEMPLATE_FILE} to its directory (charlm train --chat-template FILE writes one; "
                        "charlm serve --chat-template FILE serves one for every model without), or send the "
                        "text to continue to /v1/completions", param="model", code="no_chat_template")


class ChatTemplates:
    """The chat templates of this front end's models."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.fallback = read_template(settings.chat_template) if settings.chat_template is not None else None
        self.read: dict[Path, tuple[tuple[FileStamp, FileStamp], ChatTemplate | None]] = {}

    def of_model(self, directory: Path) -> ChatTemplate | None:
        """The directory's template (else the server's fallback), with its model's default stop;
        read again only when chat_template.jinja or generation_config.json changes."""
        stamps = (stamp(directory / TEMPLATE_FILE), stamp(directory / GENERATION_CONFIG_FILE))
        known = self.read.get(directory)
        if known is not None and known[0] == stamps:
            return known[1]
        stop = default_stop(directory)
        if stamps[0] is not None:
            template: ChatTemplate | None = read_template(directory / TEMPLATE_FILE, stop)
        else:
            template = dataclasses.replace(self.fallback, stop=stop) if self.fallback is not None else None
        self.read[directory] = (stamps, template)
        return template

    def for_request(self, view: ModelView, body: ChatOptions) -> ChatTemplate:
        """The template this request is rendered with (400 when there is none, or it cannot be used)."""
        try:
            if body.chat_template is None:
                template = self.of_model(view.path)
                if template is None:
                    raise no_template(view.name)
                return template
            if not self.settings.trust_request_chat_template:
                raise ServiceError(422, "this server does not take chat templates from requests (its operator "
                                   "can allow them: CHARLM_TRUST_REQUEST_CHAT_TEMPLATE=true); leave chat_template "
                                   "out to use the model's own", param="chat_template")
            return compiled_request_template(body.chat_template, default_stop(view.path))
        except ChatTemplateError as exc:
            raise ServiceError(422, str(exc), param="chat_template", code="chat_template_error") from None

    async def render(self, view: ModelView, messages: list[ChatMessage], body: ChatOptions) -> ChatPrompt:
        """The prompt for the conversation (400 with the template's message when rendering fails).

        A template renders first on the event loop, for at most INLINE_S: nearly all finish in a
        fraction of a millisecond, and a thread's round trip would cost more than that (several
        milliseconds before the request reaches its engine, at 32 streams). One that is not done
        by then, or a conversation over INLINE_CHARS, renders in a thread, with the whole of its
        time limit, so the event loop serves on meanwhile."""
        settings = self.settings
        size = checked_size(messages, body, settings.max_prompt_chars)
        template = self.for_request(view, body)
        arguments = ([m.for_template() for m in messages], body.add_generation_prompt,
                     body.chat_template_kwargs or {})
        limit, text = settings.chat_template_timeout_s, None
        try:
            if size <= INLINE_CHARS:  # a longer one's filters alone may take longer than the slice
                try:
                    text = template.render(*arguments, min(INLINE_S, limit), settings.max_prompt_chars)
                except ChatTemplateTimeout:
                    if limit <= INLINE_S:
                        raise
            if text is None:
                text = await asyncio.to_thread(template.render, *arguments, limit, settings.max_prompt_chars)
        except ChatTemplateError as exc:
            raise ServiceError(422, str(exc), param="messages", code="chat_template_error") from None
        if body.continue_final_message:
            text = open_final_message(text, messages[-1].text)
        return ChatPrompt(text, template.stop)


def checked_size(messages: list[ChatMessage], body: ChatOptions, limit: int) -> int:
    """The characters of a conversation (messages, names and chat_template_kwargs); one over the
    prompt limit is refused before any template reads it: a template's filters loop over it in code
    the render's deadline cannot stop."""
    size = sum(len(m.text) + len(m.name or "") for m in messages)
    size += len(json.dumps(body.chat_template_kwargs, ensure_ascii=False)) if body.chat_template_kwargs else 0
    if size > limit:
        raise ServiceError(422, f"the conversation holds {size:,} characters (messages, names and "
                           f"chat_template_kwargs); the prompt limit is {limit:,}", param="messages")
    return size


@functools.lru_cache(maxsize=REQUEST_TEMPLATES_KEPT)
def compiled_request_template(source: str, stop: tuple[str, ...]) -> ChatTemplate:
    return ChatTemplate.compile(source, "the request's chat_template", stop)


def open_final_message(prompt: str, final: str) -> str:
    """The prompt cut after the last message's text, so the reply continues it (as Hugging Face's
    continue_final_message does: the text, stripped, must appear in the prompt as written)."""
    text = final.strip()
    at = prompt.rfind(text) if text else -1
    if at < 0:
        raise ServiceError(422, "continue_final_message: the chat template does not write the last message's text "
                           "as sent (it changes it), so the reply cannot continue it", param="messages")
    return prompt[: at + len(text)]
