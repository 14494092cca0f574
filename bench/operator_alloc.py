"""host_id allocation for 1,000 nodes against a real kube-apiserver (target: every node has its
id within 60 s, at most 3 API writes per node).

Starts the envtest control plane (``make envtest-tools`` builds it once), applies the CRDs,
creates a Lockspace, starts ``vmlease-operator`` (one, or two racing ``--standalone`` ones) and
then creates N Node objects at once. The clock runs from the first Node create until every Node
has exactly one HostId. Requests are counted by the API server itself (its
``apiserver_request_total``, read before and after), so kopf's own writes (Events, peering,
finalizers) are in the count too; the benchmark's Node creates are reported apart.

    .venv/bin/python bench/operator_alloc.py [--nodes 1000] [--operators 1] [--workers 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from envtest.apiserver import APIServer, find_tools
from envtest.operator_harness import (
    Operator,
    api_client,
    apply_crds,
    create_lockspace,
    create_nodes,
    ids_by_node,
)

WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY", "CREATE", "UPDATE"}
READ_VERBS = {"GET", "LIST"}


def request_counts(server: APIServer) -> Counter[tuple[str, str, str, str]]:
    """(verb, resource, subresource, code) -> requests served so far, from the API server's
    metrics."""
    code, text = server.get("/metrics")
    if code != 200:
        raise SystemExit(f"cannot read the API server's /metrics: HTTP {code}")
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                labels = sample.labels
                key = (
                    labels["verb"],
                    labels["resource"],
                    labels.get("subresource", ""),
                    labels["code"],
                )
                counts[key] += int(sample.value)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--operators", type=int, choices=(1, 2), default=1)
    parser.add_argument("--workers", type=int, default=16, help="operator's concurrent calls")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    tools, why = find_tools()
    if tools is None:
        print(f"SKIPPED: {why}")
        return 0
    name, label = "bench", {"bench.vmlease.io/member": "yes"}
    nodes = [f"node-{i:04d}" for i in range(args.nodes)]
    with APIServer(tools) as server:
        apply_crds(server)
        api = api_client(server, pool=32)
        create_lockspace(api, name, label, sectorSize=512, alignSize="1M")
        operators = [
            Operator(server, "--standalone", "--workers", str(args.workers), name=f"op{i}")
            for i in range(args.operators)
        ]
        for op in operators:
            op.start()
        try:
            for op in operators:
                op.wait_healthy()
            time.sleep(2)  # let the first Lockspace pass settle
            before = request_counts(server)
            started = time.monotonic()
            create_nodes(api, nodes, label, workers=16)
            created = time.monotonic() - started
            deadline = started + args.timeout
            while True:
                ids = ids_by_node(api, name)
                done = len(ids) == len(nodes) and all(len(v) == 1 for v in ids.values())
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            time.sleep(3)  # Events are posted asynchronously: count them too
            delta = request_counts(server) - before
        finally:
            for op in operators:
                op.stop()

    unique = len({v[0] for v in ids.values() if v})
    by_resource: Counter[str] = Counter()
    for (verb, resource, sub, _), n in delta.items():
        if verb in WRITE_VERBS and not (resource == "nodes" and verb == "POST"):
            by_resource[f"{verb} {resource}{'/' + sub if sub else ''}"] += n
    writes = sum(by_resource.values())
    node_writes = sum(n for (v, r, _, _), n in delta.items() if r == "nodes" and v in WRITE_VERBS)
    refused = sum(n for (v, _, _, c), n in delta.items() if v in WRITE_VERBS and c == "409")
    reads = sum(n for (v, r, _, _), n in delta.items() if v in READ_VERBS and r != "nodes")
    n = len(nodes)

    print(f"\nhost_id allocation, {n} nodes, {args.operators} operator(s), real kube-apiserver")
    print(f"{'metric':<44}{'value':>12}  target")
    rows = [
        ("nodes created by the benchmark (s)", f"{created:.1f}", ""),
        ("all nodes have exactly one id (s)", f"{elapsed:.1f}", "<= 60"),
        ("nodes with an id", f"{len(ids)}/{n}", f"{n}/{n}"),
        ("distinct ids", f"{unique}", f"{n}"),
        ("API writes per node (operator + kopf)", f"{writes / n:.2f}", "<= 3"),
        ("  of which refused with 409 (id taken)", f"{refused / n:.2f}", ""),
        ("API reads per node (GET/LIST)", f"{reads / n:.2f}", ""),
        ("writes to Node objects besides creates", f"{node_writes - n}", "0"),
    ]
    for label_, value, target in rows:
        print(f"{label_:<44}{value:>12}  {target}")
    print("\nwrites by verb and resource:")
    for key, count in by_resource.most_common():
        print(f"  {key:<42}{count:>12}")
    ok = done and unique == n and elapsed <= 60 and writes / n <= 3 and node_writes == n
    print("\nRESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
