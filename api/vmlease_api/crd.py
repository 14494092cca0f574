"""Turn the pydantic models into CustomResourceDefinitions the API server accepts.

pydantic emits JSON Schema; a CRD needs a *structural* OpenAPI v3 schema
(https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/
#specifying-a-structural-schema): every node typed, no ``$ref``, no ``anyOf`` alternatives of
different types. The conversion:

* ``$ref`` into ``$defs`` is inlined (siblings such as ``description`` are kept);
* ``Optional[X]`` (``anyOf: [X, {type: null}]``) becomes plain ``X``, not required and without
  ``nullable``: the API server then prunes an explicit ``null`` before validation and defaulting,
  so "null" and "absent" mean the same thing for every client, and a JSON merge patch with
  ``null`` still removes the field;
* ``default: null`` and ``title`` are dropped; other defaults become CRD defaults;
* ``metadata``, ``apiVersion`` and ``kind`` are left to the API server (``metadata.name`` gets
  only a length bound, see ``structural_schema``).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from vmlease_api import GROUP, VERSION
from vmlease_api.models import RESOURCES, CrdInfo, Resource

#: ``kubectl get vmlease`` lists every vmlease object.
CATEGORY = "vmlease"

Schema = dict[str, Any]


def _resolve(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    while "$ref" in node or "anyOf" in node:
        if "$ref" in node:
            target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
            node = {**copy.deepcopy(target), **node}
        else:
            branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
            if len(branches) != 1:
                raise ValueError(f"a CRD schema cannot express anyOf {branches}: use one type")
            node = {**branches[0], **node}
    if node.get("default", ...) is None:
        del node["default"]
    node.pop("title", None)
    if "description" in node:
        # Docstrings are wrapped for the source; kubectl explain wraps by itself.
        node["description"] = re.sub(r"\s*\n\s*", " ", node["description"].strip())
    out: Schema = {}
    for key, value in node.items():
        if key in ("properties", "$defs"):
            out[key] = {k: _resolve(v, defs) for k, v in value.items()}
        else:
            out[key] = _resolve(value, defs)
    return out


def structural_schema(model: type[Resource]) -> Schema:
    """The ``openAPIV3Schema`` of one kind."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _resolve(raw, defs)
    props = schema["properties"]
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    # The API server owns metadata; bounding name only lets CEL rules that read it pass the
    # cost estimator (an unbounded string makes every rule "too expensive").
    props["metadata"] = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 253}},
    }
    info: CrdInfo = model.crd
    if info.root_rules:
        schema["x-kubernetes-validations"] = info.root_rules
    if info.status_rules:
        props["status"]["x-kubernetes-validations"] = info.status_rules
    required = [r for r in schema.get("required", []) if r != "metadata"]
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)  # an empty list is not valid OpenAPI
    return schema


def crd(model: type[Resource]) -> dict[str, Any]:
    """The whole CustomResourceDefinition of one kind (status subresource)."""
    info = model.crd
    columns = []
    for column in info.columns:
        entry: dict[str, Any] = {
            "name": column.name,
            "type": column.type,
            "jsonPath": column.json_path,
        }
        if column.priority:
            entry["priority"] = column.priority
        if column.description:
            entry["description"] = column.description
        columns.append(entry)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced" if info.namespaced else "Cluster",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.kind.lower(),
                "shortNames": info.short_names,
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": structural_schema(model)},
                    **(
                        {"selectableFields": [{"jsonPath": p} for p in info.selectable_fields]}
                        if info.selectable_fields
                        else {}
                    ),
                }
            ],
        },
    }


def kopf_peering_crd() -> dict[str, Any]:
    """kopf's ClusterKopfPeering (kopf.dev/v1): operator replicas publish keep-alives in its
    status and only the highest-priority one works. kopf does not ship it as a v1 CRD."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
        "spec": {
            "group": "kopf.dev",
            "scope": "Cluster",
            "names": {
                "kind": "ClusterKopfPeering",
                "listKind": "ClusterKopfPeeringList",
                "plural": "clusterkopfpeerings",
                "singular": "clusterkopfpeering",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for everything ``make crds`` writes."""
    files = {f"{GROUP}_{m.crd.plural}.yaml": crd(m) for m in RESOURCES}
    files["kopf.dev_clusterkopfpeerings.yaml"] = kopf_peering_crd()
    return files
