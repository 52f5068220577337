"""A real Orthanc (with its DICOMweb plugin) on loopback, for the DICOMweb tests.

Orthanc comes from the distribution's packages ``orthanc`` and ``orthanc-dicomweb``: either
installed (``apt-get install -y orthanc orthanc-dicomweb``), or unpacked without root by
``apt-get download`` + ``dpkg -x`` into a folder named by ``TORCHDICOM_ORTHANC_ROOT``
(``.ci/run`` does one or the other). The server runs unprivileged from a temporary folder
with its own JSON configuration: a free loopback port, storage and index in the folder,
the DICOMweb plugin, no DICOM (DIMSE) server, remote access off, HTTP basic authentication
for one user.

Import the fixture into a test module: ``from tests.orthanc_server import orthanc``.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["OrthancServer", "find_orthanc", "free_port", "orthanc"]

#: The user the server knows (``RegisteredUsers``); tests authenticate as it.
USER, PASSWORD = "torchdicom", "s3cret-pw-9f2c"
_ROOT_ENV = "TORCHDICOM_ORTHANC_ROOT"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_orthanc() -> tuple[Path, Path, dict[str, str]] | str:
    """``(Orthanc binary, DICOMweb plugin, extra environment)``, or why there is none.

    Looks in ``$TORCHDICOM_ORTHANC_ROOT`` first (a ``dpkg -x`` tree: the binary under
    ``usr/sbin``, its shared libraries under ``usr/lib``), then in the system install.
    """
    roots = []
    if os.environ.get(_ROOT_ENV):
        roots.append(Path(os.environ[_ROOT_ENV]))
    roots.append(Path("/"))
    tried = []
    for root in roots:
        binary = root / "usr" / "sbin" / "Orthanc"
        if not binary.is_file():
            found = shutil.which("Orthanc") if root == Path("/") else None
            if found is None:
                tried.append(str(binary))
                continue
            binary = Path(found)
        # Real files first: in a dpkg -x tree the plugins folder holds absolute symlinks,
        # which point into the system (or nowhere), not into the tree.
        plugins = sorted(
            glob.glob(str(root / "usr/share/orthanc/plugins/libOrthancDicomWeb.so*"))
            + glob.glob(str(root / "usr/lib/orthanc/libOrthancDicomWeb.so*")),
            key=lambda p: (os.path.islink(p), p),
        )
        if not plugins:
            tried.append(f"{root}: Orthanc without the DICOMweb plugin (orthanc-dicomweb)")
            continue
        env: dict[str, str] = {}
        if root != Path("/"):
            # The unpacked packages' own libraries (dcmtk, boost, ...) before the system's.
            libs = [str(p) for p in (root / "usr/lib").glob("*-linux-gnu*") if p.is_dir()]
            libs += [str(root / "usr/lib")]
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                [*libs, os.environ.get("LD_LIBRARY_PATH", "")]
            ).rstrip(os.pathsep)
        return binary, Path(plugins[0]), env
    return (
        "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc"
        f" orthanc-dicomweb, or set {_ROOT_ENV} to a dpkg -x tree; looked at: {', '.join(tried)})"
    )


class OrthancServer:
    """One Orthanc process on 127.0.0.1 with DICOMweb at :attr:`dicomweb_url`."""

    def __init__(self, workdir: Path, binary: Path, plugin: Path, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.workdir = workdir
        self.auth_header = {
            "Authorization": "Basic "
            + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode("ascii")
        }
        config = {
            "Name": "torchdicom-tests",
            "HttpPort": self.port,
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "Plugins": [str(plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "RemoteAccessAllowed": False,
            "DicomServerEnabled": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "HttpTimeout": 30,
            # One HTTP thread per open connection: the client keeps one per request thread
            # (max_in_flight per process, times DataLoader workers). With fewer threads a
            # connection beyond them waits for a keep-alive one to time out (about 1 s).
            "HttpThreadsCount": 160,
            "StableAge": 1,
        }
        (workdir / "orthanc.json").write_text(json.dumps(config))
        self.log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [str(binary), str(workdir / "orthanc.json")],
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
        self._wait_ready()

    def _wait_ready(self, limit_s: float = 30.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {self.log_text()[-2000:]}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {limit_s} s: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        return (self.workdir / "orthanc.log").read_text(errors="replace")

    def _request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=self.auth_header
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def get(self, path: str) -> bytes:
        return self._request("GET", path)

    def upload(self, data: bytes) -> dict:
        """Store one DICOM file (``POST /instances``); returns Orthanc's answer."""
        return json.loads(self._request("POST", "/instances", data))

    def clear(self) -> None:
        """Delete every stored patient (and so every instance)."""
        for patient in json.loads(self.get("/patients")):
            self._request("DELETE", f"/patients/{patient}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A fresh Orthanc per test module; skipped (saying why) only when it cannot be found."""
    found = find_orthanc()
    if isinstance(found, str):
        pytest.skip(found)
    binary, plugin, env = found
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"), binary, plugin, env)
    try:
        yield server
    finally:
        server.stop()
