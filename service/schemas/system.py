"""Bodies of the operations routes, for the OpenAPI schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelStatus(BaseModel):
    status: Literal["ready", "failed"]
    error: str | None = Field(None, description="why a failed model did not load, naming the file")
    active: int | None = Field(None, description="sequences being generated")
    queued: int | None = Field(None, description="sequences waiting for a batch slot")


class ModelInfo(ModelStatus):
    decode_state_bytes: int | None = Field(None, description="decode state taken at startup for max_batch_size rows")
    device_bytes: int | None = Field(None, description="CUDA memory the engine reserved at startup (state, graphs)")
    cuda_graphs: bool | None = Field(None, description="whether the decode step replays as a CUDA graph")


class Health(BaseModel):
    status: Literal["starting", "ready", "draining"]
    models: dict[str, ModelStatus]


class Info(BaseModel):
    version: str
    device: str | None
    dtype: str | None
    default_model: str | None
    limits: dict[str, int | float]
    models: dict[str, ModelInfo]


HEALTH_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": Health, "description": "serving"},
    503: {"model": Health, "description": "starting or draining: take this replica out of rotation"},
}
