"""The response models of the REST API: each route declares one (``response_model=``), so FastAPI
checks every answer against it and the OpenAPI schema says exactly what comes back."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str


class ErrorOut(BaseModel):
    """The one error shape of every route."""

    error: ErrorDetail


class HealthOut(BaseModel):
    status: str


class ModelRef(BaseModel):
    name: str
    version: str


class ReadyOut(BaseModel):
    status: str
    model: ModelRef


class ScoreOut(BaseModel):
    label: str
    probability: float
    training_images: int
    low_data: bool


class ExplanationOut(BaseModel):
    label: str
    method: str
    grid: int
    base_probability: float
    heatmap: list[list[float]]
    heatmap_png: str = Field(description="The heatmap drawn over the photo, as a PNG data URL.")
    milliseconds: float


class PredictOut(BaseModel):
    label: str | None = Field(description="The answer; null when the photo shows none of the model's labels.")
    display_label: str = Field(description="The label, or the model's own 'none of these' text.")
    confidence: float
    abstained: bool
    low_data: bool = Field(description="The answer is backed by few training images.")
    prediction_set: list[str] = Field(
        default_factory=list,
        description=(
            "Labels that together hold the right one for `coverage` of photos like the calibration "
            "photos, most likely first; empty when the model abstains (docs/PREDICTION_SETS.md)."
        ),
    )
    coverage: float | None = Field(
        default=None, description="The prediction set's target coverage; null for a model without one."
    )
    scores: list[ScoreOut]
    explanation: ExplanationOut | None = None
    model: ModelRef


class LabelOut(BaseModel):
    label: str
    training_images: int
    low_data: bool
    accuracy: float | None
    precision: float | None
    f1: float | None
    support: int | None


class AbstainOut(BaseModel):
    label: None = None
    text: str = Field(description="What the model calls the answer 'none of these'.")
    can_abstain: bool = Field(
        description="False for a model trained without `other` photos: it never answers 'none of these'."
    )


class LabelsOut(BaseModel):
    labels: list[LabelOut]
    low_data_below: int
    abstain: AbstainOut
    metrics_split: str | None


class ServingOut(BaseModel):
    batching: bool
    max_batch_size: int
    batch_concurrency: int
    max_upload_bytes: int
    max_uploads: int
    upload_wait_s: float
    body_timeout_s: float
    decode_timeout_s: float
    decode_workers: int
    explain_slots: int
    max_parts: int
    threads: int
    onnx_threads: int


class CardOut(BaseModel):
    """What the model says about itself (its directory's card; neutral words for a model without one)."""

    title: str = Field(description="The model's title, the product name its pages show.")
    description: str = Field(description="One line: what a photo is classified into.")
    none_of_these: str = Field(description="What the answer 'none of these' is called.")
    label_names: dict[str, str] = Field(description="Each label's display name.")
    intended_use: str = Field(description="Markdown.")
    out_of_scope_use: str = Field(description="Markdown.")
    data_sources: str = Field(description="Markdown; empty when whoever trained the model did not say.")


class ModelOut(BaseModel):
    """``metadata.json`` as stored (every key, also those this version does not name) plus serving facts."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    card: CardOut
    can_abstain: bool = Field(
        description="False when the model was trained without `other` photos (threshold 0): it always "
        "answers one of its labels and never 'none of these'."
    )
    labels: list[str]
    low_data_labels: list[str]
    threshold: float
    serving: ServingOut


class ExampleOut(BaseModel):
    id: int
    name: str
    label: str | None
    url: str


class ExamplesOut(BaseModel):
    examples: list[ExampleOut]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorOut,
        "description": "Undecodable, truncated or too small image, or a decompression bomb",
    },
    408: {"model": ErrorOut, "description": "The request body did not arrive in time"},
    413: {"model": ErrorOut, "description": "Upload larger than the configured limit"},
    415: {"model": ErrorOut, "description": "Not an image, or not a multipart/JSON body"},
    422: {"model": ErrorOut, "description": "Malformed request, or a multipart body with too many parts"},
    429: {"model": ErrorOut, "description": "Every explanation slot is busy (see Retry-After)"},
    503: {
        "model": ErrorOut,
        "description": "Too many uploads at once, or the image took too long to decode (see Retry-After)",
    },
}


class Gradio3Confidence(BaseModel):
    label: str
    confidence: float
    low_data: bool


class Gradio3Answer(BaseModel):
    """Gradio's Label JSON (``label``, ``confidences``) plus the additions a Gradio 3 client ignores."""

    label: str = Field(description="The label, or the model's 'none of these' text (never null).")
    confidences: list[Gradio3Confidence]
    abstained: bool
    low_data: bool
    prediction_set: list[str]
    coverage: float | None


class Gradio3Out(BaseModel):
    """What a Gradio 3 Space answered on ``/run/predict``."""

    data: list[Gradio3Answer]
    is_generating: bool
    duration: float
    average_duration: float
