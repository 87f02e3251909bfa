"""Upload benchmark: one anonymised study (500 instances, 512x512, 16 bit) to each local peer.

For every destination kind VOXL's uploader is timed against the raw transport of the same bytes,
in the same run, against the same peer:

- ``dicomweb``: Orthanc + DICOMweb plugin; VOXL's STOW-RS (batches of 50 streamed from the files,
  two in flight) vs ``curl --parallel --parallel-max 2`` posting the same multipart bodies
  (pre-built, one curl process).
- ``ftps``: pyftpdlib TLS server (own process); VOXL (zip streamed into explicit FTPS with a
  protected data channel, temp name + size check + rename) vs ``lftp`` putting the pre-built zip.
- ``sftp``: OpenSSH sshd; VOXL (zip streamed through its SFTP framing over OpenSSH's ``ssh``,
  pinned host key, temp name + rename) vs OpenSSH ``sftp -b -c aes128-gcm@openssh.com`` putting
  the pre-built zip. Also shown: VOXL with ``ssh_client: paramiko`` (its fallback) and a bare
  paramiko ``put`` of the zip.
- ``azure_blob``: Azurite; VOXL (zip cut into 8 MiB blocks staged in parallel, then committed) vs
  ``curl`` PUT of the pre-built zip with a SAS token.

VOXL's time includes building the zip (the raw side gets it for free) and its integrity checks,
not importing its Python modules: they are imported once before the runs, as in a worker that
uploads study after study (the import of paramiko and friends alone took ~0.3 s).
Each timed upload runs in a forked child; after it, the peer is checked (instances or one complete
zip arrived) and emptied. Medians of ``--runs`` runs; ratio = raw seconds / VOXL seconds (VOXL's
share of the raw throughput; target >= 0.8); client CPU seconds (user + system, child processes
included; the peers' own CPU is not counted); peak RSS of VOXL's process (or of its largest
child, the ssh process, if bigger) and of the raw tool (GNU time). The machine's other load moves single runs by +-30%: compare medians of one invocation.

The study, the zips and what the peers store live on tmpfs (``/dev/shm``) by default, so the
transports are measured, not the VM's disk, whose writeback of one run's 250 MB lands in the next
run at random (``--dir /tmp`` to include the disk).

    .venv/bin/python -m benchmarks.upload [--instances 500] [--runs 3] [--rows 512]
        [--peers dicomweb,ftps,sftp,azure_blob] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

from benchmarks._common import measure_with_cpu, median, resolve_tools_or_exit, write_result
from tests.peers import free_port, wait_for_port
from tests.peers.ftps import make_certificate
from tests.peers.sftp import write_sshd_config
from voxl_assets.project_config import (
    AzureBlobDestination,
    DicomWebDestination,
    FtpsDestination,
    SftpDestination,
)
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study
from voxl_assets.upload.base import UploadTarget
from voxl_assets.upload.factory import make_image_uploader

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
# GNU time measures each raw tool's own peak memory and CPU.
COMMON_TOOLS = {"time": "time"}
# The resolved path of every program a chosen peer needs (``reference_tools``), set by ``main``.
TOOLS: dict[str, str] = {}
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
FTP_USER, FTP_PASSWORD = "voxl", "bench-ftps-password"
BATCH = 50


def _target(run: int) -> UploadTarget:
    return UploadTarget(
        "bench-project", dt.datetime(2026, 11, 1, 12, 0), f"2.25.{run}{uuid.uuid4().int % 10**12}"
    )


def _run(command: list[str], peak_file: Path | None = None) -> None:
    """Run a raw tool; with ``peak_file``, GNU time writes the tool's own peak RSS (KiB) and its
    user and system CPU seconds (its waited-for children, such as sftp's ssh, included) there."""
    command = [TOOLS.get(command[0], command[0]), *command[1:]]
    if peak_file is not None:
        command = [TOOLS["time"], "-f", "%M %U %S", "-o", str(peak_file), *command]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr[-500:]!r}")


# --- peers ------------------------------------------------------------------------------------


class Peer:
    """One destination: started once; ``voxl`` and ``raw`` run in a forked, timed child.
    ``tools``: the system programs it needs (the server, the raw side) and how to install them."""

    name = ""
    tools: dict[str, str] = {}

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None: ...

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    def prepare(self, files: list[Path], study_zip: Path) -> None:
        """Everything the raw side gets for free (built before timing)."""

    def voxl(self, files: list[Path], target: UploadTarget) -> None:
        uploader = make_image_uploader(self.destination(), self.env())
        assert uploader is not None
        report = uploader.upload_study(files, target)
        assert report.instances == len(files)

    def destination(self) -> Any:
        raise NotImplementedError

    def env(self) -> Mapping[str, str]:
        return {}

    def raw(self, study_zip: Path, name: str, peak_file: Path) -> None:
        raise NotImplementedError

    def check_and_clean(self, expected_instances: int) -> None:
        """After each timed upload (untimed): the bytes arrived, then remove them."""


class OrthancPeer(Peer):
    name = "dicomweb"
    tools = {"Orthanc": "orthanc orthanc-dicomweb", "curl": "curl"}

    def start(self) -> None:
        self.port = free_port()
        storage = self.root / "storage"
        storage.mkdir(parents=True)
        config = {
            "Name": "voxl-bench",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "HttpPort": self.port,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "SaveJobs": False,
        }
        (self.root / "orthanc.json").write_text(json.dumps(config))
        log = (self.root / "orthanc.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [TOOLS["Orthanc"], str(self.root / "orthanc.json")], stdout=log, stderr=log
            )
        )
        if not wait_for_port(self.port, 30):
            raise RuntimeError("Orthanc did not start")
        self.url = f"http://127.0.0.1:{self.port}"

    def destination(self) -> DicomWebDestination:
        return DicomWebDestination(kind="dicomweb", url=f"{self.url}/dicom-web", batch_size=BATCH)

    def prepare(self, files: list[Path], study_zip: Path) -> None:
        self.boundary = "voxl-bench-boundary-7c1f"
        self.bodies: list[Path] = []
        for index, start in enumerate(range(0, len(files), BATCH)):
            body = self.root / f"body-{index}.bin"
            with body.open("wb") as out:
                for path in files[start : start + BATCH]:
                    out.write(
                        f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    )
                    out.write(path.read_bytes())
                    out.write(b"\r\n")
                out.write(f"--{self.boundary}--\r\n".encode())
            self.bodies.append(body)

    def raw(self, study_zip: Path, name: str, peak_file: Path) -> None:
        content_type = (
            f'Content-Type: multipart/related; type="application/dicom"; boundary={self.boundary}'
        )
        # Two requests at once, as VOXL has two batches in flight.
        command = ["curl", "-sS", "--fail", "--parallel", "--parallel-max", "2"]
        for index, body in enumerate(self.bodies):
            if index:
                command.append("--next")
            command += [
                "-o",
                "/dev/null",
                "-X",
                "POST",
                "-H",
                content_type,
                "-H",
                "Expect:",
                "-H",
                "Accept: application/dicom+json",
                "-T",
                str(body),
                f"{self.url}/dicom-web/studies",
            ]
        _run(command, peak_file)

    def check_and_clean(self, expected_instances: int) -> None:
        stored = requests.get(f"{self.url}/statistics", timeout=30).json()["CountInstances"]
        if stored != expected_instances:
            raise RuntimeError(f"Orthanc holds {stored} instances, expected {expected_instances}")
        for study in requests.get(f"{self.url}/studies", timeout=30).json():
            requests.delete(f"{self.url}/studies/{study}", timeout=120).raise_for_status()


_FTPS_SERVER = """
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.servers import FTPServer
home, port, cert, user, password = sys.argv[1:6]
authorizer = DummyAuthorizer()
authorizer.add_user(user, password, home, perm="elradfmwMT")
TLS_FTPHandler.certfile = cert
TLS_FTPHandler.tls_control_required = True
TLS_FTPHandler.tls_data_required = True
TLS_FTPHandler.authorizer = authorizer
FTPServer(("127.0.0.1", int(port)), TLS_FTPHandler).serve_forever()
"""


class FtpsPeer(Peer):
    """pyftpdlib in its own process, so the server does not share the benchmark's interpreter."""

    name = "ftps"
    tools = {"lftp": "lftp"}

    def start(self) -> None:
        self.home = self.root / "home"
        self.home.mkdir(parents=True)
        self.certificate = make_certificate(self.root)
        self.port = free_port()
        self.processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    textwrap.dedent(_FTPS_SERVER),
                    str(self.home),
                    str(self.port),
                    str(self.certificate),
                    FTP_USER,
                    FTP_PASSWORD,
                ],
                stdout=subprocess.DEVNULL,
                stderr=(self.root / "ftpd.log").open("wb"),
            )
        )
        if not wait_for_port(self.port, 20):
            raise RuntimeError("pyftpdlib did not start")

    def destination(self) -> FtpsDestination:
        return FtpsDestination(
            kind="ftps",
            host="127.0.0.1",
            port=self.port,
            username_env="BENCH_FTP_USER",
            password_env="BENCH_FTP_PASS",
            ca_bundle=str(self.certificate),
        )

    def env(self) -> Mapping[str, str]:
        return {"BENCH_FTP_USER": FTP_USER, "BENCH_FTP_PASS": FTP_PASSWORD}

    def raw(self, study_zip: Path, name: str, peak_file: Path) -> None:
        script = (
            "set ftp:ssl-force true; set ftp:ssl-protect-data true; "
            "set ssl:verify-certificate no; set net:max-retries 1; "
            f"open -u {FTP_USER},{FTP_PASSWORD} -p {self.port} 127.0.0.1; "
            f"put {study_zip} -o raw-{name}.zip"
        )
        _run(["lftp", "-c", script], peak_file)

    def check_and_clean(self, expected_instances: int) -> None:
        zips = list(self.home.rglob("*.zip"))
        if len(zips) != 1 or zips[0].name.startswith("."):
            raise RuntimeError(f"FTPS home holds {zips}, expected one zip")
        if expected_instances and len(zipfile.ZipFile(zips[0]).namelist()) != expected_instances:
            raise RuntimeError("FTPS zip is incomplete")
        for child in self.home.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


class SftpPeer(Peer):
    name = "sftp"
    tools = {"sftp": "openssh-client", "sshd": "openssh-server"}

    def start(self) -> None:
        base = self.root
        for key in ("host_key", "user_key"):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / key)])
        (base / "authorized_keys").write_text((base / "user_key.pub").read_text())
        self.home = base / "sftp-root"
        self.home.mkdir()
        self.port = free_port()
        write_sshd_config(base, self.port)
        Path("/run/sshd").mkdir(exist_ok=True)
        self.processes.append(
            subprocess.Popen(
                [TOOLS["sshd"], "-D", "-e", "-f", str(base / "sshd_config")],
                stdout=subprocess.DEVNULL,
                stderr=(base / "sshd.log").open("wb"),
            )
        )
        if not wait_for_port(self.port, 15):
            raise RuntimeError("sshd did not start")
        key_type, key = (base / "host_key.pub").read_text().split()[:2]
        self.known_host = f"[127.0.0.1]:{self.port} {key_type} {key}"
        (base / "known_hosts").write_text(self.known_host + "\n")
        self.user = os.environ.get("USER") or __import__("getpass").getuser()

    def destination(self) -> SftpDestination:
        return SftpDestination(
            kind="sftp",
            host="127.0.0.1",
            port=self.port,
            username_env="BENCH_SFTP_USER",
            private_key_path_env="BENCH_SFTP_KEY",
            known_host_key=self.known_host,
            remote_root=str(self.home),
            ssh_client="openssh",
        )

    def env(self) -> Mapping[str, str]:
        return {"BENCH_SFTP_USER": self.user, "BENCH_SFTP_KEY": str(self.root / "user_key")}

    def raw(self, study_zip: Path, name: str, peak_file: Path) -> None:
        batch = self.root / "batch"
        batch.write_text(f"put {study_zip} {self.home}/raw-{name}.zip\n")
        _run(
            [
                "sftp",
                "-q",
                "-c",  # its fastest cipher here (chacha20, the default, costs ~30% more CPU)
                "aes128-gcm@openssh.com",
                "-b",
                str(batch),
                "-i",
                str(self.root / "user_key"),
                "-P",
                str(self.port),
                "-o",
                f"UserKnownHostsFile={self.root / 'known_hosts'}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                f"{self.user}@127.0.0.1",
            ],
            peak_file,
        )

    def voxl_paramiko(self, files: list[Path], target: UploadTarget) -> None:
        destination = self.destination().model_copy(update={"ssh_client": "paramiko"})
        uploader = make_image_uploader(destination, self.env())
        assert uploader is not None
        assert uploader.upload_study(files, target).instances == len(files)

    def paramiko_put(self, study_zip: Path, name: str) -> None:
        """Reference: a bare paramiko put (no zip, no rename), i.e. the library's own ceiling."""
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(self.root / "known_hosts"))
        client.connect(
            "127.0.0.1",
            self.port,
            self.user,
            key_filename=str(self.root / "user_key"),
            look_for_keys=False,
            allow_agent=False,
        )
        sftp = client.open_sftp()
        sftp.put(str(study_zip), f"{self.home}/paramiko-{name}.zip")
        client.close()

    def check_and_clean(self, expected_instances: int) -> None:
        zips = list(self.home.rglob("*.zip"))
        if len(zips) != 1 or zips[0].name.startswith("."):
            raise RuntimeError(f"SFTP root holds {zips}, expected one zip")
        for child in self.home.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


class AzuritePeer(Peer):
    name = "azure_blob"
    container = "bench"
    tools = {"azurite-blob": "npm install -g azurite", "curl": "curl"}

    def start(self) -> None:
        self.port = free_port()
        self.processes.append(
            subprocess.Popen(
                [
                    TOOLS["azurite-blob"],
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self.port),
                    "--location",
                    str(self.root / "data"),
                    "--silent",
                    "--skipApiVersionCheck",
                    "--loose",
                ],
                stdout=subprocess.DEVNULL,
                stderr=(self.root / "azurite.log").open("wb"),
            )
        )
        if not wait_for_port(self.port, 30):
            raise RuntimeError("Azurite did not start")
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};"
        )
        from azure.storage.blob import BlobServiceClient

        self.service = BlobServiceClient.from_connection_string(self.connection_string)
        self.service.create_container(self.container)

    def destination(self) -> AzureBlobDestination:
        return AzureBlobDestination(
            kind="azure_blob", container=self.container, connection_string_env="BENCH_BLOB"
        )

    def env(self) -> Mapping[str, str]:
        return {"BENCH_BLOB": self.connection_string}

    def prepare(self, files: list[Path], study_zip: Path) -> None:
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        self.sas = generate_container_sas(
            AZURITE_ACCOUNT,
            self.container,
            account_key=AZURITE_KEY,
            permission=ContainerSasPermissions(write=True, create=True),
            expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2),
        )

    def raw(self, study_zip: Path, name: str, peak_file: Path) -> None:
        url = f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}/{self.container}/raw-{name}.zip"
        _run(
            [
                "curl",
                "-sS",
                "--fail",
                "-o",
                "/dev/null",
                "-H",
                "x-ms-blob-type: BlockBlob",
                "-H",
                "Content-Type: application/zip",
                "-H",
                "Expect:",
                "-T",
                str(study_zip),
                f"{url}?{self.sas}",
            ],
            peak_file,
        )

    def check_and_clean(self, expected_instances: int) -> None:
        container = self.service.get_container_client(self.container)
        names = [b.name for b in container.list_blobs()]
        if len(names) != 1:
            raise RuntimeError(f"container holds {names}, expected one blob")
        container.delete_blobs(*names)


PEERS: dict[str, type[Peer]] = {p.name: p for p in (OrthancPeer, FtpsPeer, SftpPeer, AzuritePeer)}


def reference_tools(peers: list[str]) -> dict[str, str]:
    """The system programs the chosen peers need, with how to install each."""
    tools = dict(COMMON_TOOLS)
    for name in peers:
        tools.update(PEERS[name].tools)
    return tools


# --- main -------------------------------------------------------------------------------------


def _timed_raw(
    function: Callable[[Path, str, Path], None], *args: Any
) -> tuple[float, float, float]:
    """(seconds, peak MiB, CPU seconds) of the raw tool itself (GNU time), in a forked child."""
    peak_file = Path(tempfile.mktemp(prefix="voxl-bench-peak-"))
    try:
        seconds, _, _ = measure_with_cpu(function, *args, peak_file)
        peak_kib, user, system = peak_file.read_text().split()[-3:]
        return seconds, float(peak_kib) / 1024, float(user) + float(system)
    finally:
        peak_file.unlink(missing_ok=True)


def _import_uploaders() -> None:
    """Load every uploader module now, so that forked timed children start with them loaded."""
    import voxl_assets.upload.azure_blob
    import voxl_assets.upload.dicomweb
    import voxl_assets.upload.ftps
    import voxl_assets.upload.sftp  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=512, help="rows and columns of each image")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument(
        "--dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the study and the peers' storage live (default: tmpfs)",
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peers {unknown}: choose from {', '.join(PEERS)}")
    TOOLS.update(resolve_tools_or_exit(reference_tools(chosen)))
    summary: dict[str, Any] = {}
    _import_uploaders()
    with tempfile.TemporaryDirectory(prefix="voxl-bench-upload-", dir=args.dir) as tmp:
        root = Path(tmp)
        spec = StudySpec(
            patient_id="ANON-0001",
            accession_number="",
            patient_name="ANONYMISED",
            birth_date="",
            rows=args.rows,
            columns=args.rows,
            series=[SeriesSpec(instances=args.instances)],
        )
        files = write_study(spec, root / "study")
        study_bytes = sum(p.stat().st_size for p in files)
        study_zip = root / "study.zip"
        with zipfile.ZipFile(study_zip, "w", compression=zipfile.ZIP_STORED) as archive:
            for path in files:
                archive.write(path, arcname=path.name)
        mib = study_bytes / 2**20
        print(f"study: {len(files)} instances, {mib:.1f} MiB ({args.rows}x{args.rows}, 16 bit)")
        for name in chosen:
            peer = PEERS[name](root / name)
            (root / name).mkdir()
            peer.start()
            try:
                peer.prepare(files, study_zip)
                sides: dict[str, list[tuple[float, float, float]]] = {"voxl": [], "raw": []}
                if isinstance(peer, SftpPeer):
                    sides["voxl_paramiko"], sides["paramiko_put"] = [], []
                for run in range(args.runs):
                    sides["voxl"].append(measure_with_cpu(peer.voxl, files, _target(run)))
                    peer.check_and_clean(len(files))
                    sides["raw"].append(_timed_raw(peer.raw, study_zip, f"{run}"))
                    peer.check_and_clean(len(files) if name == "dicomweb" else 0)
                    if isinstance(peer, SftpPeer):
                        sides["voxl_paramiko"].append(
                            measure_with_cpu(peer.voxl_paramiko, files, _target(run))
                        )
                        peer.check_and_clean(len(files))
                        sides["paramiko_put"].append(
                            measure_with_cpu(peer.paramiko_put, study_zip, f"{run}")
                        )
                        peer.check_and_clean(0)
                    time.sleep(0.2)
            finally:
                peer.stop()
            result: dict[str, Any] = {}
            for side, runs in sides.items():
                seconds = median([s for s, _, _ in runs])
                result[side] = {
                    "seconds_median": round(seconds, 3),
                    "seconds_all": [round(s, 3) for s, _, _ in runs],
                    "cpu_seconds_median": round(median([c for _, _, c in runs]), 2),
                    "mib_per_second": round(mib / seconds, 1),
                    "peak_rss_mib": round(max(p for _, p, _ in runs), 1),
                }
            result["ratio_vs_raw"] = round(
                result["raw"]["seconds_median"] / result["voxl"]["seconds_median"], 2
            )
            for side in ("voxl_paramiko", "paramiko_put"):
                if side in result:
                    result[f"ratio_{side}_vs_raw"] = round(
                        result["raw"]["seconds_median"] / result[side]["seconds_median"], 2
                    )
            summary[name] = result
    print(
        f"\n{'peer':<11} {'side':<13} {'median s':>9} {'MiB/s':>8} {'CPU s':>6} {'peak RSS MiB':>13}  ratio"
    )
    for name, result in summary.items():
        for side in ("voxl", "raw", "voxl_paramiko", "paramiko_put"):
            if side not in result:
                continue
            row = result[side]
            ratio = ""
            if side == "raw":
                ratio = f"{result['ratio_vs_raw']:.2f} (VOXL / raw, target >= 0.8)"
            elif side != "voxl":
                ratio = f"{result[f'ratio_{side}_vs_raw']:.2f} ({side} / raw)"
            print(
                f"{name:<11} {side:<13} {row['seconds_median']:>9.2f} {row['mib_per_second']:>8.1f}"
                f" {row['cpu_seconds_median']:>6.2f} {row['peak_rss_mib']:>13.1f}  {ratio}"
            )
    path = write_result(
        "upload",
        {
            "instances": args.instances,
            "rows": args.rows,
            "runs": args.runs,
            "study_mib": round(mib, 1),
            "directory": args.dir or tempfile.gettempdir(),
            "peers": summary,
        },
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
