"""Retrieval benchmark: a 500-instance CT study (512x512, 16 bit) from a local Orthanc.

VOXL's DIMSE client (C-GET into the cache's staging folder, and C-MOVE to VOXL's own Storage SCP)
against dcmtk's `movescu` moving the same study to dcmtk's `storescp`, in the same run, both
sides with TCP_NODELAY (dcmtk reads the TCP_NODELAY environment variable). Each run is a fresh
process; medians of several runs, the throughput ratio and VOXL's peak memory are reported.
Target (issue 3): VOXL at least 0.9x movescu's throughput, peak under 300 MB.

    .venv/bin/python -m benchmarks.retrieval [--instances 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
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
    print(f"written {write_result('retrieval', summary)}")


if __name__ == "__main__":
    main()
