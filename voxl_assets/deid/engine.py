"""The de-identification engine: filters, allow-list operations and output, one instance at a time.

A study is handled in two passes over its cached files, neither of which holds more than one
instance in memory: (1) every file's structure is walked from its bytes (``header_scan.py``): its
identifying values join the study's identifiers and a broken file is refused with its reason;
(2) each instance is filtered, de-identified, encoded into memory, checked there against the
allow-list and all the study's identifiers (``output.py``, ``checks.py``) and written, its pixel
data copied byte for byte from the source.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from voxl_assets.deid import output
from voxl_assets.deid.checks import (
    disallowed_tags,
    element_vr,
    instance_encodings,
    pixel_text_hits,
)
from voxl_assets.deid.encoding import TEXT_VRS, encode_value
from voxl_assets.deid.hashing import ProjectHasher
from voxl_assets.deid.header_scan import DEFLATED, EXPLICIT, InstanceScan, Refusal, scan_instance
from voxl_assets.deid.identifiers import ENGINE_TAGS, StudyIdentifiers
from voxl_assets.deid.kept_values import conform_vr, dictionary_vrs, replace_foreign_uids
from voxl_assets.deid.operations import Op, Operation, TagOperations, TagPolicy
from voxl_assets.deid.tally import (
    CREATOR_ELEMENT,
    CREATOR_KEPT,
    CREATOR_REMOVED,
    DELETED,
    PRIVATE_ELEMENT,
    REMOVED,
    AttributeKey,
    creator_key,
    private_key,
    safe_creator,
)
from voxl_assets.deid.values import (
    MAX_LENGTH_BY_VR,
    clamp_age,
    clamp_number,
    dummy_value,
    transform_date,
    transform_datetime,
    transform_time,
)
from voxl_assets.project_config import ProjectDefinition
from voxl_assets.project_regex import compile_project_regex

SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
ULTRASOUND_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.6.", "1.2.840.10008.5.1.4.1.1.3.")
BIG_ENDIAN = "1.2.840.10008.1.2.2"
UNCOMPRESSED_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class FilterReason(StrEnum):
    """Why an instance was left out. Counted per study; shown to users; never identifying."""

    MODALITY = "modality not in the project's list"
    SERIES_DESCRIPTION = "series description matches a filter"
    MANUFACTURER = "manufacturer not allowed"
    SERIES_NUMBER = "series number excluded for its manufacturer"
    TOO_FEW_INSTANCES = "series has fewer than the minimum instances"
    SECONDARY_CAPTURE = "secondary capture or screenshot not allowed"
    BURNED_IN = "burned-in annotation not allowed"
    ULTRASOUND_NO_REGIONS = "ultrasound without declared regions cannot be blanked"
    ULTRASOUND_COMPRESSED = "compressed ultrasound cannot be blanked"
    ULTRASOUND_UNDECODABLE = "ultrasound pixel data cannot be decoded for blanking"


class DeidError(Exception):
    """De-identification cannot go on; the message names the file or tag, never a value."""


@dataclass
class DeidReport:
    """What happened to a study; only counts and pseudonymous values, safe for metadata."""

    instances_in: int = 0
    instances_out: int = 0
    series_out: int = 0
    bytes_out: int = 0
    filtered: Counter[str] = field(default_factory=Counter)
    pseudo_study_uid: str | None = None
    pseudo_patient_id: str | None = None
    output_files: list[Path] = field(default_factory=list)
    blanked_instances: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # broken instances, by reason
    vr_changes: Counter[str] = field(default_factory=Counter)  # "(0008,103E) OD relabelled LO"
    # Every attribute met in the written instances (any depth) with the operation applied:
    # counted by the engine as it walks, for the de-identification report.
    attributes: Counter[AttributeKey] = field(default_factory=Counter)

    def filter_summary(self) -> str:
        return ", ".join(f"{count} {reason}" for reason, count in sorted(self.filtered.items()))

    def refusal_summary(self) -> str:
        return ", ".join(f"{count} {reason}" for reason, count in sorted(self.refused.items()))


class Deidentifier:
    """De-identifies studies for one project (thread-safe apart from the hasher's memo, which
    tolerates races: same input, same output)."""

    def __init__(
        self, project: ProjectDefinition, policy: TagPolicy, hasher: ProjectHasher
    ) -> None:
        self.project = project
        self.policy = policy
        self.hasher = hasher
        self.modalities = set(project.project.modalities)
        self.description_patterns = [
            compile_project_regex(p, ignore_case=True)
            for p in project.series_filters.description_patterns
        ]
        self.manufacturers = [
            (compile_project_regex(m.regex), set(m.exclude_series_numbers))
            for m in project.allowed_manufacturers
        ]
        self.options = project.deid
        # LO: at most 64 characters. The options are listed in the project's tag-operation files.
        self.method = "VOXL allow-list, PS3.15 E.1-1 Basic Profile with options"

    # --- filters ---------------------------------------------------------------------------
    def instance_filter(self, header: Dataset) -> FilterReason | None:
        """Why this instance (headers only) is left out, or None to keep it."""
        modality = header_value(header, "Modality").upper()
        sop_class = header_value(header, "SOPClassUID")
        if modality not in self.modalities:
            return FilterReason.MODALITY
        description = header_value(header, "SeriesDescription")
        if any(p.search(description) for p in self.description_patterns):
            return FilterReason.SERIES_DESCRIPTION
        manufacturer = header_value(header, "Manufacturer")
        matching = [
            excluded for pattern, excluded in self.manufacturers if pattern.search(manufacturer)
        ]
        if not matching:
            return FilterReason.MANUFACTURER
        series_number = header_value(header, "SeriesNumber")
        if series_number:
            try:
                number: int | None = int(float(series_number))
            except (TypeError, ValueError):
                number = None
            if number is not None and all(number in excluded for excluded in matching):
                return FilterReason.SERIES_NUMBER
        image_type = [v.upper() for v in header_values(header, "ImageType")]
        if (sop_class.startswith(SECONDARY_CAPTURE_PREFIX) or "SCREEN SAVE" in image_type) and (
            not self.options.allow_secondary_capture
        ):
            return FilterReason.SECONDARY_CAPTURE
        burned_in = header_value(header, "BurnedInAnnotation").upper() == "YES"
        ultrasound = modality == "US" or sop_class.startswith(ULTRASOUND_SOP_PREFIXES)
        if ultrasound and self.options.blank_ultrasound_outside_regions:
            return None  # burned-in text is blanked in pass 2 (or the instance rejected there)
        if burned_in and not self.options.allow_burned_in_annotation:
            return FilterReason.BURNED_IN
        return None

    # --- the two passes over a study ---------------------------------------------------------

    def deidentify_study(
        self,
        files: Sequence[Path],
        output_dir: Path,
        identifiers: StudyIdentifiers,
        patient_pseudonym: str | None = None,
    ) -> DeidReport:
        """De-identify ``files`` into ``output_dir`` (which the caller makes atomic).
        ``patient_pseudonym`` (a CSV extract's participant_id) replaces the PatientID that the
        project's operation would write, where the allow-list keeps PatientID at all.

        Pass 1 walks every file's structure (no pixel data read) and adds its identifying
        values to ``identifiers``; pass 2 de-identifies one instance at a time: the header is
        parsed, de-identified, encoded and checked in memory against all of the study's
        identifiers, written, and the pixel data element copied byte for byte behind it (it is
        not decoded unless ultrasound blanking needs it). Broken instances are refused with
        their reason; series left with fewer than the minimum instances are removed at the end.

        Raises:
            OutputCheckError: an instance failed a privacy check (nothing of it was written).
        """
        output_dir.mkdir(parents=True, exist_ok=True)
        report = DeidReport(instances_in=len(files))
        scans: list[InstanceScan] = []
        for path in files:
            scan = scan_instance(path)
            scan.add_identifiers(identifiers)
            scan.values = []  # only the verdict and offsets stay for pass 2
            scans.append(scan)
        identifiers.matcher()  # compiled once for the study
        seen: set[str] = set()
        written_by_series: dict[str, list[tuple[Path, str]]] = {}
        counted_by_series: dict[str, Counter[AttributeKey]] = {}
        for path, scan in zip(files, scans, strict=True):
            refusal = scan.refusal
            if refusal is None and not scan.sop_instance_uid:
                refusal = Refusal.NO_SOP_INSTANCE_UID
            elif refusal is None and scan.sop_instance_uid in seen:
                refusal = Refusal.DUPLICATE_SOP_INSTANCE_UID
            if refusal is not None:
                report.refused[refusal.value] += 1
                continue
            seen.add(scan.sop_instance_uid)
            counts: dict[AttributeKey, int] = {}
            outcome = self._deidentify_file(
                path, scan, output_dir, identifiers, report, patient_pseudonym, counts
            )
            if isinstance(outcome, Refusal):
                report.refused[outcome.value] += 1
                continue
            if isinstance(outcome, FilterReason):
                report.filtered[outcome.value] += 1
                continue
            source_series, out_path, out_series = outcome
            written_by_series.setdefault(source_series, []).append((out_path, out_series))
            counted_by_series.setdefault(source_series, Counter()).update(counts)
        minimum = self.project.series_filters.min_instances
        kept_series: set[str] = set()
        for source_series, written in written_by_series.items():
            if len(written) < minimum:
                for out_path, _ in written:
                    out_path.unlink()
                report.filtered[FilterReason.TOO_FEW_INSTANCES.value] += len(written)
                continue
            report.attributes.update(counted_by_series[source_series])
            for out_path, out_series in written:
                kept_series.add(out_series)
                report.instances_out += 1
                report.bytes_out += out_path.stat().st_size
                report.output_files.append(out_path)
        report.series_out = len(kept_series)
        _withhold_identifying_creators(report.attributes, identifiers)
        if not report.output_files:
            report.pseudo_study_uid = report.pseudo_patient_id = None
        return report

    def _deidentify_file(
        self,
        path: Path,
        scan: InstanceScan,
        output_dir: Path,
        identifiers: StudyIdentifiers,
        report: DeidReport,
        patient_pseudonym: str | None = None,
        counts: dict[AttributeKey, int] | None = None,
    ) -> FilterReason | Refusal | tuple[str, Path, str]:
        try:
            source = path.open("rb")
        except OSError:
            return Refusal.UNREADABLE
        with source:
            try:
                header = dcmread(source, stop_before_pixels=not scan.needs_full_read)
            except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
                return Refusal.UNREADABLE
            reason = self.instance_filter(header)
            if reason is not None:
                return reason
            source_series = header_value(header, "SeriesInstanceUID")
            tail = scan.pixel_tail
            if tail is None or self._needs_blanking(header):
                # Slow path: pixels must be decoded, or the file must be read whole (elements
                # after the pixel data, deflated or big endian): the pixel data is in ``ds``.
                if not scan.needs_full_read:
                    source.seek(0)
                    header = dcmread(source)
                ds = header
                blank_reason = self._blank_ultrasound_if_needed(ds, report)
                if blank_reason is not None:
                    return blank_reason
                tail = (0, 0)
            else:
                ds = header
            encodings = instance_encodings(ds)
            report.vr_changes.update(self.deidentify_dataset(ds, patient_pseudonym, counts))
            pixels = ds.get_item(0x7FE00010)
            if pixels is not None and tail == (0, 0) and _encapsulated(ds):
                ds[0x7FE00010].is_undefined_length = True  # fragments: written as such
            operations = self.policy.for_manufacturer(header_value(ds, "Manufacturer"))
            disallowed = disallowed_tags(ds, operations)
            encoded = output.encode_instance_header(ds, encodings)
            leaks = output.output_identifier_hits(encoded, identifiers.matcher(), encodings)
            if scan.embedded and _keeps_pixel_data(operations):
                leaks += pixel_text_hits(scan.embedded, identifiers.matcher())
            if disallowed or leaks:
                raise OutputCheckError(path.name, disallowed, leaks)
            out_path = output_dir / f"{header_value(ds, 'SOPInstanceUID')}.dcm"
            if out_path.exists():
                return Refusal.DUPLICATE_SOP_INSTANCE_UID
            tmp_path = out_path.with_suffix(".part")
            with tmp_path.open("wb") as out:
                out.write(encoded.data)
                offset, length = tail
                if length and _keeps_pixel_data(operations):
                    _copy_range(source, out, offset, length)
                written = out.tell()
            if written != len(encoded.data) + (
                length if length and _keeps_pixel_data(operations) else 0
            ):
                tmp_path.unlink()
                return Refusal.TRUNCATED_PIXEL_DATA
        os.replace(tmp_path, out_path)
        report.pseudo_study_uid = header_value(ds, "StudyInstanceUID") or report.pseudo_study_uid
        report.pseudo_patient_id = header_value(ds, "PatientID") or report.pseudo_patient_id
        return source_series, out_path, header_value(ds, "SeriesInstanceUID")

    def _needs_blanking(self, header: Dataset) -> bool:
        modality = header_value(header, "Modality").upper()
        sop_class = header_value(header, "SOPClassUID")
        ultrasound = modality == "US" or sop_class.startswith(ULTRASOUND_SOP_PREFIXES)
        return ultrasound and self.options.blank_ultrasound_outside_regions

    def deidentify_dataset(
        self,
        ds: Dataset,
        patient_pseudonym: str | None = None,
        counts: dict[AttributeKey, int] | None = None,
    ) -> list[str]:
        """Apply the allow-list to one instance in place and fix its file meta; a
        ``patient_pseudonym`` (a CSV extract's participant_id) becomes the PatientID where the
        allow-list keeps one. Returns the VR changes made to kept elements (tag and VRs, for the
        report); ``counts`` (when given) receives every attribute met with its operation."""
        operations = self.policy.for_manufacturer(header_value(ds, "Manufacturer"))
        patient_key = header_value(ds, "PatientID")
        shift = self.hasher.date_shift_days(patient_key, self.options.date_shift_days_max)
        if self.options.dates == "shift" and shift == 0:
            shift = self.hasher.date_shift_days(patient_key, 365)
        walker = _Walker(self, operations, shift, {} if counts is None else counts)
        walker.walk(ds)
        syntax = header_value(ds.file_meta, "TransferSyntaxUID")
        if syntax == DEFLATED:  # read inflated: written as what it now is
            syntax = EXPLICIT
        implicit = syntax == "1.2.840.10008.1.2"
        patient_id_op = operations.public.get(0x00100020)
        if patient_pseudonym and patient_id_op is not None and patient_id_op.op is not Op.DELETE:
            if syntax == BIG_ENDIAN:
                ds.PatientID = patient_pseudonym
            else:
                set_encoded(ds, 0x00100020, "LO", patient_pseudonym, implicit)
        if syntax == BIG_ENDIAN:  # retired: pydicom encodes these
            ds.PatientIdentityRemoved = "YES"
            ds.DeidentificationMethod = self.method
        else:
            set_encoded(ds, 0x00120062, "CS", "YES", implicit)
            set_encoded(ds, 0x00120063, "LO", self.method, implicit)
        meta = FileMetaDataset()
        for tag, vr, value in (
            (0x00020002, "UI", header_value(ds, "SOPClassUID")),
            (0x00020003, "UI", header_value(ds, "SOPInstanceUID")),
            (0x00020010, "UI", syntax),
            (0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID),
            (0x00020013, "SH", "VOXL"),
        ):
            set_encoded(meta, tag, vr, value, implicit=False)
        ds.file_meta = meta
        ds.preamble = b"\0" * 128  # a preamble may carry a TIFF header or anything else
        return walker.vr_changes

    # --- ultrasound ------------------------------------------------------------------------

    def _blank_ultrasound_if_needed(self, ds: Dataset, report: DeidReport) -> FilterReason | None:
        modality = str(ds.get("Modality", "") or "").upper()
        sop_class = str(ds.get("SOPClassUID", "") or "")
        ultrasound = modality == "US" or sop_class.startswith(ULTRASOUND_SOP_PREFIXES)
        if not (ultrasound and self.options.blank_ultrasound_outside_regions):
            return None
        regions = ds.get("SequenceOfUltrasoundRegions")
        if not regions:
            return FilterReason.ULTRASOUND_NO_REGIONS
        if str(ds.file_meta.TransferSyntaxUID) not in UNCOMPRESSED_SYNTAXES:
            return FilterReason.ULTRASOUND_COMPRESSED
        try:
            blank_outside_regions(ds)
        except Exception:  # any image pydicom cannot decode (SamplesPerPixel 0, ...): fail closed
            return FilterReason.ULTRASOUND_UNDECODABLE
        report.blanked_instances += 1
        return None


def blank_outside_regions(ds: Dataset) -> None:
    """Zero every pixel outside the union of SequenceOfUltrasoundRegions (all frames, samples)."""
    pixels = ds.pixel_array
    rows, columns = int(ds.Rows), int(ds.Columns)
    mask = np.zeros((rows, columns), dtype=bool)
    for region in ds.SequenceOfUltrasoundRegions:
        x0, y0 = int(region.RegionLocationMinX0), int(region.RegionLocationMinY0)
        x1, y1 = int(region.RegionLocationMaxX1), int(region.RegionLocationMaxY1)
        mask[max(y0, 0) : min(y1, rows - 1) + 1, max(x0, 0) : min(x1, columns - 1) + 1] = True
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    view = pixels
    if frames > 1:
        full_mask = mask[None, :, :, None] if samples > 1 else mask[None, :, :]
    else:
        full_mask = mask[:, :, None] if samples > 1 else mask
    blanked = np.where(full_mask, view, 0).astype(pixels.dtype)
    if samples > 1 and str(ds.get("PlanarConfiguration", 0)) == "1":
        # pixel_array is always colour-by-pixel; PlanarConfiguration 1 stores colour-by-plane
        axes = (0, 3, 1, 2) if frames > 1 else (2, 0, 1)
        blanked = np.ascontiguousarray(blanked.transpose(axes))
    ds.PixelData = blanked.tobytes()
    ds.BurnedInAnnotation = "NO"


class OutputCheckError(DeidError):
    """An output instance failed a privacy check before it was written (it is not written)."""

    def __init__(self, file_name: str, disallowed: list[str], leaks: list[str]) -> None:
        self.file_name = file_name
        self.disallowed = disallowed
        self.leaks = leaks
        parts = []
        if disallowed:
            parts.append(f"tags outside the allow-list: {', '.join(disallowed[:5])}")
        if leaks:
            parts.append(f"identifiers in: {', '.join(leaks[:5])}")
        super().__init__(f"{file_name}: " + "; ".join(parts))


def _encapsulated(ds: Dataset) -> bool:
    syntax = header_value(ds.file_meta, "TransferSyntaxUID")
    return syntax not in UNCOMPRESSED_SYNTAXES and syntax != DEFLATED


def _keeps_pixel_data(operations: TagOperations) -> bool:
    return all(
        operations.public.get(tag) is not None and operations.public[tag].op is Op.KEEP
        for tag in (0x7FE00010,)
    )


def _copy_range(source: Any, target: Any, offset: int, length: int) -> None:
    """Copy ``length`` bytes from ``offset``: in the kernel where possible, else in 1 MiB chunks."""
    target.flush()
    start = target.tell()
    copied = 0
    try:
        while copied < length:
            sent = os.copy_file_range(
                source.fileno(), target.fileno(), length - copied, offset + copied
            )
            if sent == 0:
                break
            copied += sent
    except OSError:
        copied = -1
    target.seek(0, os.SEEK_END)
    if copied == length:
        return
    target.seek(start)  # start again portably: cross-device, or a file system without support
    target.truncate()
    source.seek(offset)
    remaining = length
    while remaining:
        chunk = source.read(min(remaining, 1 << 20))
        if not chunk:
            raise DeidError("source file ended inside its pixel data")
        target.write(chunk)
        remaining -= len(chunk)


_READABLE_VRS = TEXT_VRS | {"IS", "DS"}
_TAGS: dict[str, BaseTag] = {}


def header_values(ds: Dataset, keyword: str) -> list[str]:
    """An element's values as strings. ASCII values still in their encoded form are read from
    their bytes without pydicom's conversion, so the element stays encoded and is written back
    byte for byte; anything else (character sets, binary VRs) goes through pydicom."""
    tag = _TAGS.get(keyword)
    if tag is None:
        found = tag_for_keyword(keyword)
        if found is None:
            raise KeyError(keyword)
        tag = _TAGS[keyword] = BaseTag(found)
    elem = ds.get_item(tag)
    if elem is None:
        return []
    if isinstance(elem, RawDataElement):
        data = elem.value
        if data is None:
            return []
        if isinstance(data, bytes) and data.isascii() and element_vr(elem) in _READABLE_VRS:
            text = data.decode("ascii").strip(" \0")
            return [v.strip(" \0") for v in text.split("\\")] if text else []
    return [str(v) for v in _as_list(ds[tag].value)]


def set_encoded(ds: Dataset, tag: int, vr: str, value: str, implicit: bool) -> None:
    """Store an ASCII value already encoded (little endian), skipping pydicom's conversions."""
    encoded = encode_value(vr, value)
    if encoded is None:
        raise DeidError(f"tag {BaseTag(tag)}: value is not ASCII")
    ds[tag] = RawDataElement(BaseTag(tag), vr, len(encoded), encoded, 0, implicit, True)


def header_value(ds: Dataset, keyword: str) -> str:
    """The first value of an element as a string ('' when absent or empty)."""
    values = header_values(ds, keyword)
    return values[0] if values else ""


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


class _Walker:
    """Applies one instance's operations, recursing into sequence items with the same rules."""

    def __init__(
        self,
        engine: Deidentifier,
        operations: TagOperations,
        shift_days: int,
        counts: dict[AttributeKey, int],
    ) -> None:
        self.engine = engine
        self.operations = operations
        self.shift_days = shift_days
        self.counts = counts  # (tag, creator, operation) -> occurrences, for the report
        self.private_creators_kept = {(g, c) for (g, c, _e) in operations.private}
        self.vr_changes: list[str] = []

    def conform(self, ds: Dataset, tag: BaseTag, number: int, creator: str | None) -> bool:
        """Give a kept element its dictionary VR (cheap when it has it); False when removed."""
        allowed = dictionary_vrs(number, creator)
        if allowed is None:
            return True
        vr = ds._dict[tag].VR  # the mapping itself: this runs for every kept element
        if vr in allowed or (vr is None and not number >> 16 & 1):
            return True  # (implicit VR: the dictionary's by definition)
        change = conform_vr(ds, tag, creator)
        if change is not None:
            self.vr_changes.append(change)
        return tag in ds

    def walk(self, ds: Dataset) -> None:
        # Tags as plain ints: BaseTag's group/element/is_private are Python properties, and this
        # loop runs for every element of every instance.
        tags = [(tag, int(tag)) for tag in ds.keys()]
        creators: dict[tuple[int, int], str] = {}
        for tag, number in tags:
            if number >> 16 & 1 and 0x0010 <= number & 0xFFFF <= 0x00FF:
                creators[(number >> 16, number & 0xFFFF)] = str(ds[tag].value)
        used_blocks: set[tuple[int, int]] = set()
        public = self.operations.public
        counts = self.counts
        for tag, number in tags:
            group, element = number >> 16, number & 0xFFFF
            if element == 0 or group == 0x0002:  # group lengths; meta lives in file_meta
                del ds[tag]
                continue
            if group & 1:
                if 0x0010 <= element <= 0x00FF:
                    continue  # creators are decided once their block's elements are
                block = element >> 8
                creator = creators.get((group, block))
                operation = None
                if block >= 0x10 and creator is not None:
                    operation = self.operations.private.get((group, creator, element & 0xFF))
                if operation is None or operation.op is Op.DELETE:
                    key = (
                        private_key(group, element & 0xFF),
                        creator or "",
                        REMOVED if operation is None else DELETED,
                    )
                    counts[key] = counts.get(key, 0) + 1
                    del ds[tag]
                    continue
                if not self.conform(ds, tag, number, creator):
                    continue
                used_blocks.add((group, block))
                key = (private_key(group, element & 0xFF), creator or "", operation.op.value)
            else:
                operation = public.get(number)
                if operation is None or operation.op is Op.DELETE:
                    if number not in ENGINE_TAGS:
                        key = (number, "", REMOVED if operation is None else DELETED)
                        counts[key] = counts.get(key, 0) + 1
                        del ds[tag]
                    continue
                if not self.conform(ds, tag, number, None):
                    continue
                key = (number, "", operation.op.value)
            counts[key] = counts.get(key, 0) + 1
            self.apply(ds, tag, operation)
        for (group, block), creator in creators.items():
            kept = (group, block) in used_blocks
            key = (creator_key(group), creator, CREATOR_KEPT if kept else CREATOR_REMOVED)
            counts[key] = counts.get(key, 0) + 1
            if not kept:
                del ds[BaseTag((group << 16) | block)]

    def apply(self, ds: Dataset, tag: BaseTag, operation: Operation) -> None:
        raw = ds.get_item(tag)
        vr = element_vr(raw)
        if operation.op is Op.KEEP:
            if vr == "SQ":
                for item in ds[tag].value:
                    self.walk(item)
            elif vr == "UI":  # only well-known UIDs stay as they are
                replace_foreign_uids(ds, tag, self.engine.hasher.uid)
            return  # other values: untouched raw bytes, no decoding cost
        if vr != "SQ" and self._apply_encoded(ds, raw, vr, operation):
            return
        elem = ds[tag]
        if vr == "SQ":
            # Anything but keep on a sequence empties it: items could only be cleaned by keep.
            elem.value = DicomSequence([])
            return
        if elem.value is None or elem.value == "" or elem.value == b"":
            return
        if operation.op is Op.REPLACE:
            elem.value = operation.value if operation.value is not None else dummy_value(vr)
        elif operation.op is Op.NUMERIC_RANGE:
            self._clamp(elem, vr, operation)
        else:
            function = self._value_function(vr, operation)
            if function is None:
                raise DeidError(f"tag {tag} ({operation.label}): op 'date' needs a DA, TM or DT")
            elem.value = self._map_values(elem, function)

    def _value_function(self, vr: str, operation: Operation) -> Callable[[str], str] | None:
        """The per-value transformation of replace_uid, secure_hash and date (None: a date
        operation on a VR that holds no date); both the encoded and the general path use it."""
        op = operation.op
        if op is Op.REPLACE_UID:
            return self._pseudo_uid
        if op is Op.SECURE_HASH:
            length = MAX_LENGTH_BY_VR.get(vr, 64)
            return lambda v: self.engine.hasher.hash(v, length)
        if op is Op.DATE:
            option = self.engine.options.dates
            if vr == "DA":
                return lambda v: transform_date(v, option, self.shift_days)
            if vr == "TM":
                return lambda v: transform_time(v, option)
            if vr == "DT":
                return lambda v: transform_datetime(v, option, self.shift_days)
        return None

    def _apply_encoded(
        self, ds: Dataset, raw: DataElement | RawDataElement, vr: str, operation: Operation
    ) -> bool:
        """Apply a text operation to an element still in its encoded ASCII form, and store the
        result encoded again, so neither side goes through pydicom's value conversion (the
        values are split and stripped as pydicom does). False when the general path must run."""
        if not (
            isinstance(raw, RawDataElement)
            and raw.is_little_endian
            and vr in TEXT_VRS
            and isinstance(raw.value, bytes)
            and raw.value.isascii()
        ):
            return False
        text = raw.value.decode("ascii").rstrip(" \0")
        if not text:
            return True  # empty stays empty, as on the general path
        values = [v.rstrip(" \0") for v in text.split("\\")]
        if operation.op is Op.REPLACE:
            replacement = operation.value if operation.value is not None else dummy_value(vr)
            if not isinstance(replacement, str):
                return False
            new_values = [replacement]
        elif operation.op is Op.NUMERIC_RANGE:
            return False
        else:
            function = self._value_function(vr, operation)
            if function is None:
                return False  # the general path reports the error
            new_values = [function(v) for v in values]
        encoded = encode_value(vr, new_values if len(new_values) > 1 else new_values[0])
        if encoded is None:
            return False
        ds[raw.tag] = RawDataElement(
            raw.tag, raw.VR, len(encoded), encoded, 0, raw.is_implicit_VR, True
        )
        return True

    def _pseudo_uid(self, value: str) -> str:
        return self.engine.hasher.uid(value)

    @staticmethod
    def _map_values(elem: DataElement, function: Any) -> Any:
        if isinstance(elem.value, MultiValue | list):
            return [function(str(v)) for v in elem.value]
        return function(str(elem.value))

    @staticmethod
    def _clamp(elem: DataElement, vr: str, operation: Operation) -> None:
        low, high = operation.minimum, operation.maximum
        if vr == "AS":
            elem.value = clamp_age(str(elem.value), low, high)
        elif vr in {"DS", "IS", "FL", "FD", "US", "SS", "UL", "SL", "SV", "UV"}:
            values = _as_list(elem.value)
            clamped: list[Any] = []
            for v in values:
                number = clamp_number(float(v), low, high)
                clamped.append(int(number) if vr in {"IS", "US", "SS", "UL", "SL"} else number)
            elem.value = clamped if len(clamped) > 1 else clamped[0]
        else:
            raise DeidError(
                f"tag {elem.tag} ({operation.label}): op 'numeric_range' needs a number VR"
            )


def iter_study_files(directory: Path) -> list[Path]:
    """The instance files of a study folder, in a stable order."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))


def replace_tree(staging: Path, final: Path) -> None:
    """Swap ``staging`` into ``final`` so readers never see a half-written study."""
    import shutil

    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old)
    else:
        os.replace(staging, final)


def _withhold_identifying_creators(
    attributes: Counter[AttributeKey], identifiers: StudyIdentifiers
) -> None:
    """Private creators are values: each one named in the tally is checked against the study's
    identifiers (and made printable) before it can reach the report."""
    matcher = identifiers.matcher()
    tallied: Counter[AttributeKey] = Counter()
    for (number, creator, operation), count in attributes.items():
        if number & (PRIVATE_ELEMENT | CREATOR_ELEMENT):
            creator = safe_creator(creator, matcher)
        tallied[(number, creator, operation)] += count
    attributes.clear()
    attributes.update(tallied)
