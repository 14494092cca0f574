"""``status.conditions`` by the Kubernetes rules, shared by the operator and the agents.

``lastTransitionTime`` changes only when ``status`` changes, so it answers "since when"; writing
the same condition again must not move it (``meta.SetStatusCondition`` in apimachinery).
"""

from __future__ import annotations

import datetime

from vmlease_api.models import Condition, ConditionStatus


def now() -> datetime.datetime:
    """UTC now at second precision, as metav1.Time stores it."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None = None,
    at: datetime.datetime | None = None,
) -> list[Condition]:
    """A new list with ``type_`` set; other conditions keep their order and values."""
    old = find_condition(conditions, type_)
    transition = at or now()
    if old is not None and old.status == status:
        transition = old.last_transition_time
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=transition,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
