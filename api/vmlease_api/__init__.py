"""The vmlease Kubernetes API (group ``vmlease.io``, version ``v1alpha1``) as plain pydantic models.

This package is shared by the operator and the node agent, so it must never import kopf or a
Kubernetes client: the agent runs its own tight renewal loop and only needs the shapes, names and
condition helpers. ``crds/*.yaml`` are generated from these models (``make crds``).
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "vmlease.io"
VERSION: Final = "v1alpha1"
#: a literal, not built from the two above, so the models' ``Literal`` apiVersion type-checks
API_VERSION: Final = "vmlease.io/v1alpha1"
assert f"{GROUP}/{VERSION}" == API_VERSION
