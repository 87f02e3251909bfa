"""Retrieval benchmark: a 500-instance CT study (512x512, 16 bit) from a local Orthanc.

VOXL's DIMSE client (C-GET into the cache's staging folder, and C-MOVE to VOXL's own Storage SCP)
against dcmtk's `movescu` moving the same study to dcmtk's `storescp`, in the same run, both
sides with TCP_NODELAY (dcmtk reads the TCP_NODELAY environment variable). Each run is a fresh
process; medians of several runs, the throughput ratio and VOXL's peak memory are reported.
Target (issue 3): VOXL at least 0.9x movescu's throughput, peak under 300 MB.

Then small studies (issue 17): ``--small-studies`` studies of one 64x64 instance, each found
(C-FIND) and retrieved (C-GET) in turn on kept associations, from an Orthanc left as Debian
starts it (Nagle's algorithm on, as in most DCMTK-based archives) side by side with the same
Orthanc started with TCP_NODELAY=1: milliseconds per study, medians of the runs, and the ratio.
VOXL acknowledges at once (TCP_QUICKACK), so an archive's Nagle's algorithm should cost it
nothing; without that, every response waited on a 40 ms delayed acknowledgement.

    .venv/bin/python -m benchmarks.retrieval [--instances 500] [--runs 3] [--small-studies 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks._common import measure, median, resolve_tools_or_exit, write_result
from tests.peers import wait_for_port
from tests.peers.orthanc import VOXL_AE, OrthancServer
from voxl_assets.synthetic import SeriesSpec, StudySpec, write_study
from voxl_assets.vna.client import StudyQuery, VnaSettings, make_vna_client


def voxl_retrieve(settings: VnaSettings, study_uid: str, out: Path) -> None:
    client = make_vna_client(settings)
    try:
        location = client.find_study(StudyQuery(study_uid, "", ""))
        out.mkdir(parents=True)
        count = client.retrieve(location, out).received
    finally:
        client.close()
    assert count == location.instances, (count, location.instances)


# dcmtk's, resolved on the system: pynetdicom installs scripts of the same names in .venv/bin.
REFERENCE_TOOLS = {"movescu": "dcmtk", "storescp": "dcmtk"}


def movescu_retrieve(
    orthanc: OrthancServer, study_uid: str, out: Path, tools: dict[str, str]
) -> None:
    out.mkdir(parents=True)
    env = {**os.environ, "TCP_NODELAY": "1"}
    receiver = subprocess.Popen(
        [tools["storescp"], "-aet", VOXL_AE, "-od", str(out), "+xa", str(orthanc.move_scp_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port(orthanc.move_scp_port, 10)
        subprocess.run(
            [
                tools["movescu"],
                "-aet",
                "BENCH",
                "-aec",
                orthanc.ae_title,
                "-aem",
                VOXL_AE,
                "-S",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study_uid}",
                "127.0.0.1",
                str(orthanc.dicom_port),
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        receiver.terminate()
        receiver.wait(10)
    assert len(list(out.iterdir())) > 0


def small_studies_ms(settings: VnaSettings, study_uids: list[str], out: Path) -> float:
    """Median milliseconds to find and retrieve each study in turn, on kept associations."""
    client = make_vna_client(settings)
    times: list[float] = []
    try:
        for uid in study_uids:
            started = time.perf_counter()
            location = client.find_study(StudyQuery(uid, "", ""))
            folder = out / uid
            folder.mkdir(parents=True)
            client.retrieve(location, folder)
            times.append(time.perf_counter() - started)
    finally:
        client.close()
    return 1000 * median(times)


def small_studies(root: Path, count: int, runs: int) -> dict[str, Any]:
    """One-instance studies from an Orthanc with Nagle's algorithm on and one with it off."""
    source = root / "small"
    uids = []
    for i in range(count):
        spec = StudySpec(
            patient_id=f"SMALL-{i}",
            accession_number=f"SMALL-ACC-{i}",
            rows=64,
            columns=64,
            series=[SeriesSpec(instances=1)],
        )
        write_study(spec, source / str(i))
        uids.append(spec.study_uid)
    archives = {
        "nagle_on": OrthancServer(root / "orthanc-nagle"),
        "nagle_off": OrthancServer(root / "orthanc-nodelay", env={"TCP_NODELAY": "1"}),
    }
    result: dict[str, Any] = {"studies": count}
    for name, archive in archives.items():
        archive.start()
        try:
            archive.upload_folder(source)
            settings = VnaSettings(
                host="127.0.0.1",
                port=archive.dicom_port,
                ae_title=archive.ae_title,
                calling_ae_title=VOXL_AE,
                queries_per_second=100000.0,
            )
            per_run = [
                small_studies_ms(settings, uids, root / f"small-{name}-{run}")
                for run in range(runs)
            ]
        finally:
            archive.stop()
        result[name] = {"ms_per_study": round(median(per_run), 2), "runs": per_run}
    result["ratio_nagle_on_vs_off"] = round(
        result["nagle_on"]["ms_per_study"] / result["nagle_off"]["ms_per_study"], 2
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small-studies", type=int, default=100)
    args = parser.parse_args()
    tools = resolve_tools_or_exit(REFERENCE_TOOLS)
    with tempfile.TemporaryDirectory(prefix="voxl-bench-retrieval-") as tmp:
        root = Path(tmp)
        spec = StudySpec(
            patient_id="BENCH-MRN",
            accession_number="BENCH-ACC",
            rows=512,
            columns=512,
            series=[SeriesSpec(instances=args.instances)],
        )
        write_study(spec, root / "study")
        orthanc = OrthancServer(
            root / "orthanc",
            extra_config={"MaximumPduLength": int(os.environ.get("BENCH_ORTHANC_PDU", "16384"))},
        )
        orthanc.start()
        try:
            loaded = orthanc.upload_folder(root / "study")
            base = VnaSettings(
                host="127.0.0.1",
                port=orthanc.dicom_port,
                ae_title=orthanc.ae_title,
                calling_ae_title=VOXL_AE,
                move_destination_ae=VOXL_AE,
                store_scp_port=orthanc.move_scp_port,
                queries_per_second=100.0,
            )
            sides: dict[str, Any] = {
                "voxl_c_get": lambda out: voxl_retrieve(
                    replace(base, retrieve="c-get"), spec.study_uid, out
                ),
                "voxl_c_move": lambda out: voxl_retrieve(
                    replace(base, retrieve="c-move"), spec.study_uid, out
                ),
                "movescu": lambda out: movescu_retrieve(orthanc, spec.study_uid, out, tools),
            }
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
            for run in range(args.runs):
                for name, function in sides.items():
                    out = root / f"{name}-{run}"
                    results[name].append(measure(function, out))
                    shutil.rmtree(out)
        finally:
            orthanc.stop()
        small = small_studies(root, args.small_studies, args.runs) if args.small_studies else None
    size_mb = loaded * (512 * 512 * 2) / 1e6
    summary: dict[str, Any] = {"instances": loaded}
    for name, runs in results.items():
        seconds = median([s for s, _ in runs])
        summary[name] = {
            "median_seconds": round(seconds, 3),
            "instances_per_second": round(loaded / seconds, 1),
            "megabytes_per_second": round(size_mb / seconds, 1),
            "peak_mib": round(max(p for _, p in runs), 1),
            "runs": [round(s, 3) for s, _ in runs],
        }
    reference = summary["movescu"]["instances_per_second"]
    for name in ("voxl_c_get", "voxl_c_move"):
        summary[name]["ratio_vs_movescu"] = round(
            summary[name]["instances_per_second"] / reference, 2
        )
    summary["target"] = ">= 0.9x movescu, VOXL peak < 300 MB"
    print(f"{'':12} {'inst/s':>8} {'MB/s':>7} {'median s':>9} {'peak MiB':>9} {'ratio':>6}")
    for name in sides:
        row = summary[name]
        print(
            f"{name:12} {row['instances_per_second']:8} {row['megabytes_per_second']:7} "
            f"{row['median_seconds']:9} {row['peak_mib']:9} {row.get('ratio_vs_movescu', ''):>6}"
        )
    print("(movescu's peak is the benchmark's python wrapper, not dcmtk's)")
    if small is not None:
        summary["small_studies"] = small
        print(
            f"{small['studies']} one-instance studies, find + C-GET each (ms/study, median): "
            f"archive with Nagle's algorithm on {small['nagle_on']['ms_per_study']}, "
            f"off {small['nagle_off']['ms_per_study']}, ratio {small['ratio_nagle_on_vs_off']}"
        )
    print(f"written {write_result('retrieval', summary)}")


if __name__ == "__main__":
    main()
