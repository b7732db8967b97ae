"""The study file's vocabulary shared by the schema, the graph and the plug-ins' settings: `SpecError`, the
strict base model, and derived settings (values computed from finished arms, each a graph edge)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag


class SpecError(Exception):
    """Bad study input: one message naming the file, the key path and the reason."""

    def __init__(self, file: str | Path, path: str, reason: str):
        self.file, self.path, self.reason = str(file), path, reason
        super().__init__(f"{self.file}: {path}: {reason}" if path else f"{self.file}: {reason}")


# ---------------------------------------------------------------- schema
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LogitMatched(Strict):
    """tau at which the sweep's "L at grok" equals `target`'s (tracking.conventions.l_at_grok), interpolated."""
    derive: Literal["logit_matched"] = Field(description="this derivation")
    sweep: list[str] = Field(min_length=1, description="arms of a tau sweep (an arm with a sweep stands for all "
                                                       "of them)")
    target: str = Field(description="the arm whose \"L at grok\" is matched")


class NormAtGrok(Strict):
    """w_c of a free control arm: median over its grokked seeds of the norm at the end of its run
    (tracking.conventions.w_c; docs/statistics.md, w_c)."""
    derive: Literal["median_norm_at_grok"] = Field(description="this derivation")
    arm: str = Field(description="the free control arm")


class LogitAtGrok(Strict):
    """An arm's "L at grok" (tracking.conventions.l_at_grok: its seed-mean logit_scale at its median t_grok),
    the target of a mediator clamp (levers/logit_norm.py)."""
    derive: Literal["logit_scale_at_grok"] = Field(description="this derivation")
    arm: str = Field(description="the arm whose \"L at grok\" is taken")


Derived = Annotated[Union[LogitMatched, NormAtGrok, LogitAtGrok], Field(discriminator="derive")]
DERIVED = (LogitMatched, NormAtGrok, LogitAtGrok)


def _number_or_derived(v: Any) -> str:
    return "derived" if isinstance(v, (dict, *DERIVED)) else "number"


PositiveOrDerived = Annotated[
    Union[Annotated[float, Field(gt=0), Tag("number")], Annotated[Derived, Tag("derived")]],
    Discriminator(_number_or_derived)]
UNION_TAGS = {"number", "derived", "logit_matched", "median_norm_at_grok", "logit_scale_at_grok"}


def is_derived(value: Any) -> bool:
    """A setting given as a derivation (resolved from finished arms by a graph edge), not a number."""
    return isinstance(value, DERIVED)
