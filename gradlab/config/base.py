"""What every part of the schema shares: strict frozen models, model-level conflicts, and
the number types with their ranges."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Activation = Literal["tanh", "relu", "sigmoid", "gelu", "identity"]
InitScheme = Literal["normal", "xavier", "he", "orthogonal"]
DType = Literal["float32", "float64"]

# Upper bounds keep a typo (an extra zero or three) from becoming an hour of swapping; the
# memory estimate below is the real guard.
Size = Annotated[int, Field(ge=1, le=1_000_000)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


KeyPath = tuple[Union[str, int], ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Conflict(ValueError):
    """A model-level check: the message, and the keys (relative to the model) it is about,
    the first one first. The error names the one an option set, if any (the option made the
    conflict), else the first one the file writes."""

    def __init__(self, message: str, *keys: Union[str, KeyPath]) -> None:
        super().__init__(message)
        self.keys = [(k,) if isinstance(k, str) else tuple(k) for k in keys]
