"""Configuration as docs/configuration.md's table promises it: every CHARLM_* variable is read, every flag wins over
its variable, and the settings whose meaning is more than a value (CORS origins in two forms, the
default model's fallback, batch size 0, the threads formula, hidden directories) do what they say."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import threading
from pathlib import Path

import httpx
import pytest
import torch
from pydantic import SecretStr

from charlm.chat_template import template_path
from service.cli import add_serve_command, settings_from
from service.control import registry as registry_module
from service.control.registry import cpu_threads
from service.settings import Settings
from tests.service.helpers import engine_of, running_app, serve_process, service_state, settings_for

ROOT = Path(__file__).resolve().parents[2]

# A value for each setting that differs from its default, as the environment would spell it.
FROM_ENVIRONMENT = {
    "models_dir": "/srv/models", "default_model": "mine", "device": "cpu", "dtype": "bfloat16", "host": "0.0.0.0",
    "port": "8123", "max_batch_size": "64", "cuda_graphs": "false", "engine_process": "false", "max_queued": "7",
    "max_new_tokens": "99", "max_prompt_chars": "77", "max_n": "3", "max_body_bytes": "4096",
    "request_timeout_s": "12.5", "api_key": "k1", "admin_key": "a1", "models_poll_s": "0.5",
    "cors_origins": '["https://a.example"]', "stream_interval": "4", "sse_keepalive_s": "3",
    "shutdown_grace_s": "9", "torch_threads": "2", "log_level": "debug", "workers": "3", "compile": "false",
    "stream_writes_per_s": "2500", "chat_template": str(template_path("play")), "trust_request_chat_template": "true",
    "chat_template_timeout_s": "2.5", "training": "true", "data_dir": "/srv/data", "train_concurrency": "2",
    "max_queued_jobs": "3", "max_upload_bytes": "1000", "data_quota_bytes": "123456", "train_executor": "ray",
    "train_device": "cpu", "train_threads": "3", "cancel_timeout_s": "4.5", "fallback_model": "spare",
    "max_loaded": "2", "keep_alive": "5m", "load_wait_s": "7", "engine_hang_s": "3", "engine_restarts": "2",
}


def plain(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def serve_args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers())
    return parser.parse_args(["serve", *flags])


def test_docs_document_exactly_the_settings_there_are():
    """The table of `charlm serve`'s settings: docs/configuration.md up to its first section (the
    CPU decode step's variables, which the decoder reads, follow it)."""
    section = (ROOT / "docs" / "configuration.md").read_text().split("# Configuration", 1)[1].split("\n## ", 1)[0]
    documented = {name.lower() for name in re.findall(r"`CHARLM_([A-Z_]+)`", section)}
    assert documented == set(Settings.model_fields)


@pytest.fixture(autouse=True)
def no_charlm_variables(monkeypatch):
    """Only what a test sets: none from the shell running the suite."""
    for name in [name for name in os.environ if name.startswith("CHARLM_")]:
        monkeypatch.delenv(name)


def test_every_setting_is_read_from_its_charlm_variable(monkeypatch):
    assert set(FROM_ENVIRONMENT) == set(Settings.model_fields), "a new setting needs a value here"
    defaults = Settings()
    parsed = {name: plain(getattr(Settings(**{name: text}), name)) for name, text in FROM_ENVIRONMENT.items()}
    for name, text in FROM_ENVIRONMENT.items():
        monkeypatch.setenv(f"CHARLM_{name.upper()}", text)
    configured = Settings()
    for name in FROM_ENVIRONMENT:
        value = plain(getattr(configured, name))
        assert value == parsed[name] != plain(getattr(defaults, name)), f"CHARLM_{name.upper()} was not read"


# A value for each flag that differs from FROM_ENVIRONMENT's.
FROM_FLAGS = {
    **dict.fromkeys(FROM_ENVIRONMENT, "5"), "cors_origins": "https://b.example", "device": "auto",
    "dtype": "float16", "log_level": "error", "cuda_graphs": "true", "engine_process": "true",
    "default_model": "theirs", "host": "127.0.0.2", "api_key": "k2", "admin_key": "a2", "models_dir": "/srv/other",
    "max_body_bytes": "8192", "compile": "true", "chat_template": str(template_path("verse")),
    "trust_request_chat_template": "false", "training": "false", "data_dir": "/srv/other-data",
    "train_executor": "local", "train_device": "cuda",
}


@pytest.mark.parametrize("name", sorted(FROM_ENVIRONMENT))
def test_a_flag_wins_over_its_variable(monkeypatch, name):
    monkeypatch.setenv(f"CHARLM_{name.upper()}", FROM_ENVIRONMENT[name])
    settings = settings_from(serve_args(f"--{name.replace('_', '-')}", FROM_FLAGS[name]))
    expected = plain(getattr(Settings(**{name: FROM_FLAGS[name]}), name))
    assert plain(getattr(settings, name)) == expected != plain(getattr(Settings(), name))


@pytest.mark.parametrize("text", ['["https://a.example", "https://b.example"]', "https://a.example, https://b.example"])
def test_cors_origins_are_a_json_list_or_comma_separated_in_the_variable_and_the_flag(monkeypatch, text):
    monkeypatch.setenv("CHARLM_CORS_ORIGINS", text)
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]
    monkeypatch.delenv("CHARLM_CORS_ORIGINS")
    assert settings_from(serve_args("--cors-origins", text)).cors_origins == ["https://a.example", "https://b.example"]


def test_broken_json_in_cors_origins_is_a_clear_error(monkeypatch):
    from charlm.cli import CommandError

    with pytest.raises(CommandError, match="cors_origins: Value error, not a JSON list of origins"):
        settings_from(serve_args("--cors-origins", '["https://a.example"'))


def test_the_ray_executor_without_ray_names_the_extra_to_install(monkeypatch, tmp_path, capsys):
    from charlm.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    argv = ["serve", "--models-dir", str(tmp_path), "--training", "true", "--train-executor", "ray"]
    assert main(argv) == 2
    assert capsys.readouterr().err == ("charlm serve: error: CHARLM_TRAIN_EXECUTOR=ray needs Ray, which the ray "
                                       "extra installs: pip install 'charlm[ray]'\n")


@pytest.mark.anyio
async def test_batch_size_0_is_32_on_a_cpu_and_threads_follow_the_formula(tiny_models, monkeypatch):
    """CHARLM_TORCH_THREADS 0: (CPUs - 1) / models, at least 1; here as if the process had 8 CPUs."""
    monkeypatch.setattr(registry_module, "available_cpus", lambda: 8)
    try:
        async with running_app(settings_for(tiny_models, max_batch_size=0)) as (client, app):
            info = (await client.get("/info")).json()
            assert info["limits"]["max_batch_size"] == 32 and engine_of(app, "tiny-gpt").max_batch_size == 32
            registry = service_state(app).models.registry
            models = len(registry.entries)
            assert registry.config.threads == (8 - 1) // models == cpu_threads(models)
            started: list[int] = []  # a thread started now, as the engine threads were, computes with
            probe = threading.Thread(target=lambda: started.append(torch.get_num_threads()))
            probe.start()
            probe.join()
            assert started == [(8 - 1) // models]
        async with running_app(settings_for(tiny_models, torch_threads=3)) as (_, app):
            assert service_state(app).models.registry.config.threads == 3
        monkeypatch.setattr(registry_module, "available_cpus", lambda: 2)
        assert cpu_threads(3) == 1  # never below one
    finally:
        torch.set_num_threads(1)  # the suite's own (tests/conftest.py)


@pytest.mark.anyio
async def test_hidden_directories_are_never_loaded(own_models, tiny_models):
    shutil.copytree(tiny_models / "tiny-lstm", own_models / ".mine.partial")
    admin = {"Authorization": "Bearer admin"}
    async with running_app(settings_for(own_models, admin_key="admin", models_poll_s=0)) as (client, _):
        assert list((await client.get("/health")).json()["models"]) == ["tiny-gpt"]
        assert (await client.post("/admin/reload", headers=admin)).json()["loaded"] == []
        names = [model["name"] for model in (await client.get("/admin/models", headers=admin)).json()["models"]]
        assert names == ["tiny-gpt"]


def test_variables_configure_charlm_serve_flags_win_and_the_default_model_falls_back(tiny_models):
    """A server process configured from its environment: CHARLM_MAX_BATCH_SIZE loses to the flag,
    a CHARLM_DEFAULT_MODEL that is not served falls back to the first model, and comma-separated
    CHARLM_CORS_ORIGINS are allowed."""
    environment = {"CHARLM_MODELS_DIR": str(tiny_models), "CHARLM_MAX_BATCH_SIZE": "3",
                   "CHARLM_DEFAULT_MODEL": "not-there", "CHARLM_CORS_ORIGINS": "https://a.example,https://b.example",
                   "CHARLM_MAX_NEW_TOKENS": "77"}
    with serve_process("--max-batch-size", "5", environment=environment) as server:
        server.wait_healthy()
        info = httpx.get(f"{server.url}/info").json()
        assert info["limits"]["max_batch_size"] == 5 and info["limits"]["max_new_tokens"] == 77
        assert info["default_model"] == "tiny-gpt"  # the first of tiny-gpt, tiny-lstm, tiny-lstm_attention
        answer = httpx.post(f"{server.url}/generate", json={"inputs": "the", "parameters": {"max_new_tokens": 3}})
        assert answer.headers["x-charlm-model"] == "tiny-gpt"
        preflight = {"origin": "https://b.example", "access-control-request-method": "POST"}
        allowed = httpx.options(f"{server.url}/generate", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://b.example"
        assert "default model 'not-there' is not available; using 'tiny-gpt'" in server.output()
