"""OpenAI's fine-tuning job request, as charlm takes it: `hyperparameters` holds OpenAI's three and
any `charlm train --set` setting (checked by training's own code when the job is planned)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from service.frontend.schemas.common import StrictModel

MAX_SETTINGS = 64
MAX_METADATA = 16
Scalar = bool | int | float | str


class Hyperparameters(StrictModel):
    """OpenAI's, each a value or "auto" (the preset's), and charlm train's settings by name."""

    model_config = ConfigDict(extra="allow", strict=True)

    n_epochs: Literal["auto"] | Annotated[float, Field(gt=0, le=10_000)] = "auto"
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=65_536)] = "auto"
    learning_rate_multiplier: Literal["auto"] | Annotated[float, Field(gt=0, le=1_000)] = "auto"

    @model_validator(mode="after")
    def scalar_settings(self) -> Hyperparameters:
        extra = self.model_extra or {}
        if len(extra) > MAX_SETTINGS:
            raise ValueError(f"at most {MAX_SETTINGS} settings")
        for name, value in extra.items():
            if not isinstance(value, Scalar):
                raise ValueError(f"{name} must be a number, a boolean or a string (a charlm train setting)")
            if isinstance(value, float) and value != value:
                raise ValueError(f"{name} must be a number, not NaN")
        return self


class Supervised(StrictModel):
    hyperparameters: Hyperparameters | None = None


class Method(StrictModel):
    type: Literal["supervised"] = Field(description="charlm trains by next-character prediction: supervised only")
    supervised: Supervised | None = None


class JobRequest(StrictModel):
    model: str = Field(min_length=1, max_length=200, description="a preset (a new model) or a served model "
                       "(training continues from it)")
    training_file: str = Field(min_length=1, max_length=100)
    validation_file: str | None = Field(None, max_length=100)
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, lt=2**63)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    integrations: list[Any] | None = None

    @field_validator("metadata")
    @classmethod
    def few_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > MAX_METADATA or any(len(k) > 64 for k in value)):
            raise ValueError(f"metadata holds at most {MAX_METADATA} keys of at most 64 characters")
        return value

    @field_validator("integrations")
    @classmethod
    def no_integrations(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("charlm has no integrations (send none)")
        return value

    @model_validator(mode="after")
    def one_place_for_hyperparameters(self) -> JobRequest:
        inner = self.method.supervised.hyperparameters if self.method and self.method.supervised else None
        if inner is not None and self.hyperparameters is not None:
            raise ValueError("give hyperparameters or method.supervised.hyperparameters, not both")
        return self

    def settings(self) -> dict[str, Any]:
        """The request as service.jobs.creation takes it."""
        chosen = self.hyperparameters
        if chosen is None and self.method and self.method.supervised:
            chosen = self.method.supervised.hyperparameters
        hyper = {} if chosen is None else {**chosen.model_dump(exclude_unset=True), **(chosen.model_extra or {})}
        return {**self.model_dump(exclude={"hyperparameters", "method", "integrations"}), "hyperparameters": hyper}
