"""Node selection follows metav1.LabelSelector semantics."""

from __future__ import annotations

import pytest
from vmlease_api.models import LabelSelector
from vmlease_api.selector import matches

LABELS = {"zone": "a", "vmlease.io/enabled": "true"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, True),
        ({}, True),
        ({"matchLabels": {"zone": "a"}}, True),
        ({"matchLabels": {"zone": "b"}}, False),
        ({"matchLabels": {"missing": "x"}}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}, True),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}]}, True),
        ({"matchExpressions": [{"key": "rack", "operator": "NotIn", "values": ["b"]}]}, True),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "rack", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "rack", "operator": "DoesNotExist"}]}, True),
        (
            {
                "matchLabels": {"zone": "a"},
                "matchExpressions": [{"key": "vmlease.io/enabled", "operator": "DoesNotExist"}],
            },
            False,
        ),
    ],
)
def test_selector_matches_like_kubernetes(selector, expected):
    parsed = None if selector is None else LabelSelector.model_validate(selector)
    assert matches(parsed, LABELS) is expected
