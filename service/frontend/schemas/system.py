"""Bodies of the operations routes, for the OpenAPI schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.frontend.schemas.errors import RETRY_AFTER


class ModelStatus(BaseModel):
    status: Literal["ready", "loading", "restarting", "standby", "unloaded", "failed"] = Field(
        description="restarting: its engine died or hung and another starts; standby: it loads at the first request "
        "that names it (CHARLM_MAX_LOADED, CHARLM_KEEP_ALIVE); unloaded: by an administrator")
    version: str | None = Field(None, description="the served weights' fingerprint")
    error: str | None = Field(None, description="why a failed model did not load, naming the file, or why a "
                              "restarting one's engine went")
    reload_error: str | None = Field(
        None, description="why the directory's newer contents are not served (the version named still is)"
    )
    active: int | None = Field(None, description="sequences being generated")
    queued: int | None = Field(None, description="sequences waiting for a batch slot")


class ModelInfo(ModelStatus):
    decode_state_bytes: int | None = Field(None, description="decode state taken at startup for max_batch_size rows")
    device_bytes: int | None = Field(None, description="CUDA memory the engine reserved at startup (state, graphs)")
    cuda_graphs: bool | None = Field(None, description="whether the decode step replays as a CUDA graph")
    decode_attention: str | None = Field(
        None, description="how a GPT's decode step attends: triton (the kernel), sdpa or bmm"
    )
    decode_attention_reason: str | None = Field(None, description="why: the kernel's self-check, or the device")
    compiled: bool | None = Field(None, description="whether the decode step runs compiled (torch.compile)")
    compile_s: float | None = Field(None, description="seconds compiling the decode step took at startup")
    compile_error: str | None = Field(None, description="why the step runs as written although compiling was asked")
    cpu_backend: str | None = Field(None, description="on a CPU, how a lone request's step runs: eager, onnx "
                                    "(ONNX Runtime) or inductor (CHARLM_CPU_BACKEND)")
    cpu_backend_reason: str | None = Field(None, description="why: the setting, what auto measured, or what failed")
    cpu_prepare_s: float | None = Field(None, description="seconds compiling, or exporting and loading, that step "
                                        "took at startup")
    cpu_step_from: str | None = Field(None, description="where the exported step came from: model directory, "
                                      "cache or exported")
    dtype: str | None = Field(None, description="the dtype this model decodes in, where dtype auto chose it per model")
    dtype_reason: str | None = Field(None, description="the timings that chose it")


class Health(BaseModel):
    status: Literal["starting", "ready", "draining"]
    models: dict[str, ModelStatus]


class FrontEnd(BaseModel):
    index: int = Field(description="which of the server's HTTP front ends answered (0 to workers - 1)")
    workers: int = Field(description="the server's HTTP front-end processes")
    pid: int = Field(description="this front end's process id")


class Liveness(BaseModel):
    status: Literal["alive"]
    uptime_s: float = Field(description="seconds since this front end started")


class Readiness(BaseModel):
    status: Literal["ready", "starting", "default_not_ready", "draining"]
    reason: str | None = Field(None, description="why this replica should get no new requests")
    default_model: str | None = Field(None, description="the model of requests that name none (or the fallback "
                                      "standing in for it)")
    default_status: str | None = Field(None, description="the default model's status: ready, loading, restarting "
                                       "or standby keep the replica ready (its requests wait for the engine)")
    ready_models: list[str] = Field(description="models that would answer a request now")


class Info(BaseModel):
    version: str
    device: str | None
    dtype: str | None
    default_model: str | None
    limits: dict[str, int | float]
    training: bool = Field(False, description="whether /v1/files and /v1/fine_tuning/jobs are on (CHARLM_TRAINING)")
    models: dict[str, ModelInfo]
    front_end: FrontEnd


class AdminModel(ModelStatus):
    name: str
    path: str
    loaded_at: float | None = Field(None, description="Unix time this version was loaded")
    load_seconds: float | None = Field(None, description="how long loading and warming up took")
    weights_bytes: int | None = Field(None, description="the weights in memory, in the served dtype")
    decode_state_bytes: int | None = None
    device_bytes: int | None = None
    engine_pid: int | None = Field(None, description="the engine process's id (none for an engine in a thread)")


class AdminModels(BaseModel):
    models: list[AdminModel]
    retiring: int = Field(description="replaced or removed versions still finishing their requests")


class ReloadResult(BaseModel):
    loaded: list[str] = Field(description="new models, now served")
    replaced: list[str] = Field(description="models whose new weights are now served")
    removed: list[str] = Field(description="models whose directory is gone; they finish what they run")
    failed: dict[str, str] = Field(description="directories that could not be loaded, with the reason")


HEALTH_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": Health, "description": "serving"},
    503: {"model": Health, "description": "starting or draining: take this replica out of rotation",
          "headers": RETRY_AFTER},
}

READY_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": Readiness, "description": "ready: send this replica requests"},
    503: {"model": Readiness, "description": "starting, the default model not ready, or draining: send it none"},
}
