"""A real kube-apiserver + etcd for tests, started the way controller-runtime's envtest does it.

There is no kubelet and no controller-manager: nothing runs Pods, ownerReferences are never
garbage-collected, namespaces never finish deleting, and namespaces get no `default`
ServiceAccount (create one before creating Pods). Everything else is the real API server:
validation, CRDs, admission, and, because `--authorization-mode=Node,RBAC`, real authorization,
so a test can prove that an identity is denied (403) what its RBAC does not grant.

Identities: an admin token in `system:masters`, any further static token users declared before
start (the static token file is read once), and ServiceAccount tokens minted at run time with
the TokenRequest API (`service_account_token`), which works because the server is given a
signing key pair and an issuer.

The binaries come from `scripts/install-envtest.sh` (`make envtest-tools`), which builds them
once into a cache outside the repo; `find_tools` looks there and says why when they are missing.
"""

from __future__ import annotations

import base64
import ctypes
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from toolscache import tools_cache

REPO = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO / "scripts" / "envtest-versions.env"
BUILD_HINT = "run `make envtest-tools` (scripts/install-envtest.sh) to build them once"
TOOL_NAMES = ("etcd", "kube-apiserver", "kubectl", "helm")
# The issuer only has to be a URL the server and its token reviewers agree on.
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
START_TIMEOUT = 60.0


class EnvtestError(RuntimeError):
    """The control plane did not start, or a kubectl call failed; the message says why."""


@dataclass(frozen=True)
class Tools:
    """Paths of the cached, pinned binaries."""

    etcd: Path
    kube_apiserver: Path
    kubectl: Path
    helm: Path
    k8s_version: str


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """The KEY=VALUE pins shared with the install script (its single source of versions)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


def tools_dir() -> Path:
    """Where install-envtest.sh puts the binaries."""
    v = read_versions()
    name = f"envtest-k8s{v['K8S_VERSION']}-etcd{v['ETCD_VERSION']}-helm{v['HELM_VERSION']}"
    return tools_cache() / name / "bin"


def find_tools() -> tuple[Tools | None, str | None]:
    """The cached binaries, or None and a reason that says how to get them."""
    bindir = tools_dir()
    missing = [n for n in TOOL_NAMES if not os.access(bindir / n, os.X_OK)]
    if missing:
        return None, f"{', '.join(missing)} not found in {bindir}: {BUILD_HINT}"
    tools = Tools(
        etcd=bindir / "etcd",
        kube_apiserver=bindir / "kube-apiserver",
        kubectl=bindir / "kubectl",
        helm=bindir / "helm",
        k8s_version=read_versions()["K8S_VERSION"],
    )
    return tools, None


@dataclass(frozen=True)
class TokenUser:
    """A static-token identity; declare it before start, the token file is read only then."""

    name: str
    groups: tuple[str, ...] = ()
    token: str = field(default_factory=lambda: secrets.token_hex(24))


def free_port() -> int:
    """A loopback port that was free a moment ago (the usual, slightly racy, envtest way)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Run in the child before exec: if pytest dies hard, the kernel kills etcd/apiserver too.

    (The signal follows the death of the thread that started them, so start from a thread that
    lives as long as the server, as pytest's main thread does.)
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    """A one-day certificate: a CA when self-signed (issuer None), else a loopback server cert."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(loopback), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pki(directory: Path) -> dict[str, Path]:
    """Make a CA, a serving cert for 127.0.0.1/localhost, and the ServiceAccount signing pair.

    EC P-256 keys: generated in milliseconds, unlike RSA, and both the apiserver's TLS stack and
    its ServiceAccount token signer (ES256) accept them.
    """
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("vmlease-envtest-ca", ca_key, None, ca_key)
    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving_cert = _certificate("kube-apiserver", serving_key, ca_cert, ca_key)
    sa_key = ec.generate_private_key(ec.SECP256R1())

    files = {
        "ca.crt": ca_cert.public_bytes(serialization.Encoding.PEM),
        "serving.crt": serving_cert.public_bytes(serialization.Encoding.PEM),
        "serving.key": _pem_key(serving_key),
        "sa.key": _pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = directory / name
        paths[name].write_bytes(data)
        paths[name].chmod(0o600)
    return paths


class APIServer:
    """etcd + kube-apiserver on loopback ports, with a kubeconfig for the admin user.

    Use as a context manager, or call `start()` and `stop()`. `stop()` always runs to the end:
    both processes are ended and the temporary directory (certs, etcd data, logs) is removed.
    """

    def __init__(self, tools: Tools, users: Sequence[TokenUser] = ()) -> None:
        self.tools = tools
        self.admin = TokenUser("envtest-admin", ("system:masters",))
        self.users = {u.name: u for u in users}
        self.dir = Path(tempfile.mkdtemp(prefix="vmlease-envtest-"))
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = self.dir / "kubeconfig"
        self.ca_file = self.dir / "ca.crt"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def token(self) -> str:
        """The admin's bearer token (group system:masters: bypasses RBAC)."""
        return self.admin.token

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, for subprocesses such as kubectl, helm or the operator."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    @property
    def pids(self) -> list[int]:
        """Process ids of the running etcd and kube-apiserver (for leak checks)."""
        return [proc.pid for proc in self._procs.values()]

    def __enter__(self) -> APIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            pki = write_pki(self.dir)
            etcd_url = self._start_etcd()
            self._start_apiserver(pki, etcd_url)
            self._write_kubeconfig()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.dir / f"{name}.log").open("wb")
        with log:
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _check_alive(self, name: str) -> None:
        rc = self._procs[name].poll()
        if rc is not None:
            raise EnvtestError(f"{name} exited with {rc}:\n{self.log_tail(name)}")

    def _start_etcd(self) -> str:
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        # --unsafe-no-fsync: the data dir is thrown away, and fsync dominates write latency.
        self._spawn(
            "etcd",
            [
                str(self.tools.etcd),
                "--name=envtest",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=envtest={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._poll("etcd", lambda: _http_ok(f"{client}/health"))
        return client

    def _start_apiserver(self, pki: dict[str, Path], etcd_url: str) -> None:
        tokens = self.dir / "tokens.csv"
        rows = [self.admin, *self.users.values()]
        # token,user,uid[,"group,group"]: no fourth column without groups, since the server
        # splits an empty one into a group named "".
        tokens.write_text(
            "".join(
                f"{u.token},{u.name},{u.name}"
                + (f',"{",".join(u.groups)}"' if u.groups else "")
                + "\n"
                for u in rows
            )
        )
        tokens.chmod(0o600)
        self._spawn(
            "kube-apiserver",
            [
                str(self.tools.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.dir}",
                f"--tls-cert-file={pki['serving.crt']}",
                f"--tls-private-key-file={pki['serving.key']}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki['sa.pub']}",
                f"--service-account-signing-key-file={pki['sa.key']}",
                # Set explicitly to silence the default's warning; nothing routes these IPs.
                "--service-cluster-ip-range=10.0.0.0/24",
                # The node agent's DaemonSet is privileged; server-side dry runs must accept it.
                "--allow-privileged=true",
            ],
        )

    def _write_kubeconfig(self) -> None:
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "envtest",
                    "cluster": {"server": self.url, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": self.admin.name, "user": {"token": self.admin.token}}],
            "contexts": [
                {"name": "envtest", "context": {"cluster": "envtest", "user": self.admin.name}}
            ],
            "current-context": "envtest",
        }
        # JSON is YAML, so every kubeconfig reader accepts it.
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

    def _wait_ready(self) -> None:
        def ready() -> bool:
            try:
                return self.get("/readyz")[0] == 200
            except OSError:  # not listening yet
                return False

        self._poll("kube-apiserver", ready)

    def _poll(self, name: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            self._check_alive(name)
            if time.monotonic() > deadline:
                raise EnvtestError(
                    f"{name} not ready after {START_TIMEOUT}s:\n{self.log_tail(name)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        # Reverse order: the apiserver first, so it never logs a lost etcd during teardown.
        for name in reversed(list(self._procs)):
            proc = self._procs.pop(name)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def kubectl(
        self,
        *args: str,
        token: str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl as the admin, or as whoever `token` belongs to.

        `--token` replaces the kubeconfig user's token, so the server and CA stay the same.
        With check=True a non-zero exit raises, with kubectl's stderr in the message.
        """
        argv = [str(self.tools.kubectl), f"--kubeconfig={self.kubeconfig}"]
        if token is not None:
            argv.append(f"--token={token}")
        result = subprocess.run(
            [*argv, *args], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise EnvtestError(
                f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        """GET path as the admin (or as `token`'s owner): the HTTP status and the body.

        For asserting exact status codes (401 vs 403) that kubectl only paraphrases.
        """
        request = urllib.request.Request(self.url + path)
        request.add_header("Authorization", f"Bearer {token or self.token}")
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def service_account_token(self, namespace: str, name: str, duration: str = "1h") -> str:
        """A bound token for an existing ServiceAccount, minted through the TokenRequest API."""
        out = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}")
        return out.stdout.strip()


def _http_ok(url: str) -> bool:
    """True when a plain-HTTP GET of url answers 200 (etcd's /health)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:  # URLError and HTTPError are OSErrors
        return False
