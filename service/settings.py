"""Service configuration: environment variables prefixed CHARLM_, overridden by `charlm serve` flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from charlm.chat_template import check_template_file


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHARLM_", extra="ignore", frozen=True)

    models_dir: Path = Field(Path("models"), description="directory holding model directories")
    default_model: str = Field("shakespeare-gpt", description="model used when a request names none")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: on CUDA, per model the faster of bfloat16 and float32 (timed at startup); "
        "float32 on CPU"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_batch_size: int = Field(
        0, ge=0, le=4096, description="sequences stepped together per model; 0: 256 on CUDA, 32 on CPU"
    )
    cuda_graphs: bool = Field(True, description="on CUDA, replay each model's decode step as a CUDA graph")
    compile: bool = Field(
        True, description="on CUDA, compile each model's decode step (torch.compile) at startup, before its capture"
    )
    workers: int = Field(
        0, ge=0, le=64, description="HTTP front-end processes sharing the port and every model's engine; "
        "0: 1 below 4 cores, else cores / 4 (at most 8)"
    )
    engine_process: bool = Field(
        True, description="run each model's engine in a process of its own (false: a thread of the server's)"
    )
    max_queued: int = Field(256, ge=0, description="requests waiting per model before 429")
    max_new_tokens: int = Field(4096, ge=1, description="upper limit of max_new_tokens / max_tokens")
    max_prompt_chars: int = Field(16384, ge=1, description="longest prompt accepted, in characters (a prompt to score "
                                  "may be long)")
    max_n: int = Field(16, ge=1, description="most sequences one request may ask for (n, list inputs)")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body (413 above)")
    request_timeout_s: float = Field(300.0, gt=0, description="per-request time limit, queueing included")
    api_key: SecretStr | None = Field(None, description="when set, generation routes need a Bearer token")
    admin_key: SecretStr | None = Field(
        None, description="Bearer token of the /admin routes; unset: administration is off (403)"
    )
    fallback_model: str | None = Field(
        None, description="model that answers requests naming none while the default is not ready (unset: they get "
        "503); the answer names the model that produced it"
    )
    max_loaded: int = Field(0, ge=0, description="most models with a running engine; the others load on demand, "
                            "evicting the least recently used idle one (0: no limit)")
    keep_alive: Annotated[float | None, NoDecode] = Field(
        None, description="unload a model's engine once it has been idle this long: seconds, or 30s, 5m, 1h (unset, "
        "-1 or forever: never); the default model stays loaded"
    )
    load_wait_s: float = Field(60.0, gt=0, le=3600, description="how long a request waits for its model's engine to "
                               "start (on demand, or after a restart) before 503")
    engine_hang_s: float = Field(10.0, ge=2, le=3600, description="an engine silent this long, or one step that runs "
                                 "this long, is hung: it is killed and restarted")
    engine_restarts: int = Field(5, ge=0, le=1000, description="restarts of a model's engine within 5 minutes; one "
                                 "more death marks the model failed (a crash loop)")
    models_poll_s: float = Field(
        2.0, ge=0, description="seconds between looks at models_dir for new, replaced or removed models; 0: off"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS: a JSON list, or comma-separated"
    )
    stream_interval: int = Field(
        1, ge=1, le=1024, description="a stream's characters are sent every this many (1: each as it comes)"
    )
    stream_writes_per_s: float = Field(
        10_000, gt=0, description="stream writes per second per front end before characters are grouped: with S "
        "streams open, a stream writes at most every S / this seconds; an idle stream writes at once"
    )
    sse_keepalive_s: float = Field(15.0, gt=0, description="seconds between keep-alive comments")
    shutdown_grace_s: float = Field(30.0, ge=0, description="how long streams may finish after SIGTERM")
    chat_template: Path | None = Field(
        None, description="a Jinja chat template file for the models whose directory has no chat_template.jinja"
    )
    trust_request_chat_template: bool = Field(
        False, description="let a request send its own chat_template (rendered in the same sandbox and limits)"
    )
    chat_template_timeout_s: float = Field(
        1.0, gt=0, le=60, description="longest a chat template may take to render one request (400 past it)"
    )
    training: bool = Field(False, description="serve the training API (/v1/files, /v1/fine_tuning/jobs): needs the "
                           "admin key")
    data_dir: Path = Field(Path("data"), description="where uploaded files, jobs and their checkpoints are kept "
                           "(SQLite and files); one server schedules the jobs of a data directory")
    train_concurrency: int = Field(1, ge=1, le=64, description="training jobs that run at once")
    max_queued_jobs: int = Field(16, ge=1, description="jobs that may wait to run before creating one answers 409")
    max_upload_bytes: int = Field(50_000_000, ge=1, description="largest file upload (413 above, before it is read)")
    data_quota_bytes: int = Field(10_000_000_000, ge=1, description="disk space files, jobs and checkpoints may "
                                  "take together (507 above)")
    train_executor: Literal["local", "ray"] = Field("local", description="where jobs run: local child processes, "
                                                    "or Ray Jobs (CHARLM_RAY_ADDRESS)")
    train_device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="training jobs' device; unset: "
                                                                "the serving device")
    train_threads: int = Field(0, ge=0, description="CPU threads of a training job; 0: (cores - 1) / 2, at least 1")
    cancel_timeout_s: float = Field(30.0, gt=0, description="how long a cancelled or paused run may take to "
                                    "checkpoint before it is killed")
    torch_threads: int = Field(0, ge=0, description="intra-op CPU threads; 0: (cores - 1) / models, at least 1")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("chat_template")
    @classmethod
    def readable_template(cls, path: Path | None) -> Path | None:
        """The file must be there and be a template now, not at the first chat request."""
        if path is None:
            return None
        check_template_file(path)
        return path

    @field_validator("keep_alive", mode="before")
    @classmethod
    def duration(cls, value: object) -> object:
        """Seconds, or a number with s, m or h (as Ollama's keep_alive); negative or `forever`: None."""
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("", "forever", "none"):
                return None
            scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1])
            try:
                value = float(text[:-1] if scale else text) * (scale or 1)
            except ValueError:
                raise ValueError(f"{value!r} is not a duration: seconds, or a number with s, m or h") from None
        if isinstance(value, (int, float)) and value < 0:
            return None
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def origins_from_text(cls, value: object) -> object:
        """CHARLM_CORS_ORIGINS and --cors-origins alike: a JSON list (`["https://a.example"]`) or
        comma-separated origins (`https://a.example,https://b.example`)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list of origins ({exc})") from None
        return [origin.strip() for origin in text.split(",") if origin.strip()]
