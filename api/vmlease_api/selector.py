"""Which Nodes a Lockspace selects: ``metav1.LabelSelector`` semantics, evaluated locally.

The operator matches every Node against every Lockspace on each Node event; asking the API server
(a label-selected list) per event would cost a request where a dict lookup suffices.
"""

from __future__ import annotations

from collections.abc import Mapping

from vmlease_api.models import LabelSelector, LabelSelectorRequirement, SelectorOperator


def matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """True when ``labels`` satisfy ``selector``; an absent or empty selector selects all."""
    if selector is None:
        return True
    if any(labels.get(key) != value for key, value in selector.match_labels.items()):
        return False
    return all(_requirement(req, labels) for req in selector.match_expressions)


def _requirement(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = req.key in labels
    if req.operator == SelectorOperator.EXISTS:
        return present
    if req.operator == SelectorOperator.DOES_NOT_EXIST:
        return not present
    if req.operator == SelectorOperator.IN:
        return present and labels[req.key] in req.values
    # NotIn also selects Nodes without the label, as Kubernetes does.
    return not present or labels[req.key] not in req.values
