"""The vmlease Kubernetes API (group ``vmlease.io``, version ``v1alpha1``) as plain pydantic models.

This package is shared by the operator and the node agent, so it must never import kopf or a
Kubernetes client: the agent runs its own tight renewal loop and only needs the shapes, names and
condition helpers. ``crds/*.yaml`` are generated from these models (``make crds``).
"""

GROUP = "vmlease.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
