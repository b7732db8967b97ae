"""An arm's optimizer section over the study's: what `optimizer:` in an arm means (graph.py builds each arm's)."""
from __future__ import annotations

from pydantic import ValidationError

from interventions.registry import OPTIMIZERS
from interventions.study.schema import StudyBase as Study
from interventions.study.types import SpecError


def arm_optimizer(study: Study, given: dict | None, path: str) -> dict:
    """An arm's optimizer: its `optimizer` keys over defaults.optimizer's; of the defaults' settings, those
    the arm's kind also takes carry over (a wrapper's: its base's too), so `{kind: orthograd}` keeps the
    study's lr and betas for its AdamW base and `{weight_decay: 0}` changes only that."""
    d = study.defaults.optimizer.model_dump()
    if not given:
        return d
    kind = given.get("kind", d["kind"])
    if kind not in OPTIMIZERS:
        raise SpecError(study.source, f"{path}.optimizer.kind",
                        f"unknown optimizer {kind!r} (registered: {', '.join(OPTIMIZERS.names())})")
    S = OPTIMIZERS.get(kind).Settings
    takes = set(S.model_fields)
    base = given.get("base", getattr(S.model_fields.get("base"), "default", None))
    if S.model_config.get("extra") == "allow" and base in OPTIMIZERS:   # a wrapper: its base's settings too
        takes |= set(OPTIMIZERS.get(base).Settings.model_fields)
    out = {"kind": kind, **{k: v for k, v in d.items() if k in takes}, **given}
    try:
        return {"kind": kind, **S(**{k: v for k, v in out.items() if k != "kind"}).model_dump()}
    except ValidationError as e:
        err = e.errors()[0]
        raise SpecError(study.source, f"{path}.optimizer." + ".".join(map(str, err["loc"])),
                        err["msg"].removeprefix("Value error, ")) from None
