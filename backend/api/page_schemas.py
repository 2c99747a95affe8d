"""The JSON shapes of organising experiments: changing one (name, notes, tags, archive) and
the page of the list. (The experiment's own shapes are in `backend.api.schemas`.)"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from backend.api.schemas import ExperimentOut

MAX_NOTES_CHARS = 20_000
MAX_TAGS = 20
# An optimizer's name as the registry knows it (the list searches by it).
OptimizerName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]

Tag = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9._:+/-]{0,31}$"),
    Field(
        description="1–32 characters: lower-case letters, digits and `. _ : + / -`, starting "
        "with a letter",
        examples=["baseline"],
    ),
]


class ExperimentUpdate(BaseModel):
    """What to change of an experiment; fields left out stay as they are (one at least).

    A field is left out, never null: its type is not nullable, and the default (None, not
    validated) means "unchanged".
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    name: str = Field(None, min_length=1, max_length=120, pattern=r"^[^\x00]*$")
    notes: str = Field(
        None,
        max_length=MAX_NOTES_CHARS,
        pattern=r"^[^\x00]*$",
        description="Markdown (paragraphs, headings, emphasis, code, lists, links), shown on "
        "the experiment's page and its share links; an empty string clears them",
    )
    tags: list[Tag] = Field(
        None,
        max_length=MAX_TAGS,
        description="The experiment's tags, all of them (a set: each once)",
        json_schema_extra={"uniqueItems": True},
    )
    archived: bool = Field(
        None,
        strict=True,
        description="true: hidden from the list unless asked for; false: shown again",
    )

    @field_validator("tags")
    @classmethod
    def _a_set(cls, tags: list[str]) -> list[str]:
        if len(set(tags)) != len(tags):
            raise ValueError("tags are a set: give each tag once")
        return tags

    @model_validator(mode="after")
    def _something_to_change(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("give at least one of name, notes, tags, archived")
        return self


class ExperimentPage(BaseModel):
    items: list[ExperimentOut]
    total: int = Field(description="How many experiments match the search and filters")
    limit: int
    offset: int
