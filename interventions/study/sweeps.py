"""What an arm's `sweep:` may name: the registered levers' numeric settings (a flat lever's by name, another's
as lever.setting), each value checked by the lever's own settings model."""
from __future__ import annotations

from interventions.kinds import user_fields
from interventions.registry import LEVERS


def sweepable() -> dict[str, tuple[str, str]]:
    """Sweep key -> (lever, setting): a flat lever's numeric settings by name, another's as lever.setting."""
    out = {}
    for name, lever in LEVERS.items():
        for k, f in user_fields(lever.Settings).items():
            ann = str(f.annotation)
            if "float" in ann or "int" in ann:
                out[k if lever.flat else f"{name}.{k}"] = (name, k)
    return out


def check_sweep(v: dict | None) -> dict | None:
    """An arm's `sweep` checked: keys sweepable, values distinct and valid for their setting."""
    keys = sweepable()
    for k, vals in (v or {}).items():
        if k not in keys:
            raise ValueError(f"cannot sweep {k!r} (sweepable: {', '.join(keys)})")
        if not vals:
            raise ValueError(f"sweep of {k!r} is empty")
        if len(set(vals)) != len(vals):
            raise ValueError(f"repeated value in sweep of {k!r}: {vals}")
        lever, setting = keys[k]
        for x in vals:
            try:
                LEVERS.get(lever).Settings(**{setting: x})
            except ValueError as e:
                err = e.errors()[0] if hasattr(e, "errors") else {"msg": str(e), "ctx": {}}
                if err.get("type") == "greater_than" and err["ctx"].get("gt") == 0:
                    raise ValueError(f"{k} must be > 0 (got {vals})") from None
                raise ValueError(f"{k}: {err['msg']} (got {vals})") from None
    return v
