"""Tables of the VOXL database.

The database is the only place (with the raw cache) where identifiers live: MRN, accession number
and source study UID stay here so progress can be tracked and pseudonyms linked back for the
mapping table. Absent identifiers are stored as '' (not NULL) so the unique keys hold.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from voxl_assets.states import (
    RegistrationState,
    StudyStatus,
    extract_partition_key,
    study_partition_key,
)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class ExtractRegistration(Base):
    """An extract identity (project, extract datetime) claimed by one source (folder or CSV
    file). The ``extracts`` row exists only once the source is ingested; until then, and when the
    ingest fails, this row alone records it, so a failure leaves nothing else behind."""

    __tablename__ = "extract_registrations"
    __table_args__ = (
        UniqueConstraint("project", "extract_datetime", name="uq_extract_registration"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(128))
    extract_datetime: Mapped[datetime] = mapped_column(DateTime)
    source_path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=RegistrationState.PENDING.value)
    # Why the last ingest failed (file, column, row; never a value), and whether the input was
    # at fault (exit code 2) rather than the system (exit code 1).
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    bad_input: Mapped[bool] = mapped_column(Boolean, default=False)
    warnings: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    counts: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    omop_es_settings: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    omop_es_git_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Bumped when a failed registration is retried or replaced: part of the sensor's run key.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    registered_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def partition_key(self) -> str:
        return extract_partition_key(self.project, self.extract_datetime)


class ExtractSourceProblem(Base):
    """A source in the extracts folder that could not become a registration (unreadable summary,
    unregistered project, an identity another source holds): shown by `voxl status`."""

    __tablename__ = "extract_source_problems"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_path: Mapped[str] = mapped_column(Text, unique=True)
    reason: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Extract(Base):
    """An ingested extract: its studies are linked through ``extract_studies``."""

    __tablename__ = "extracts"
    __table_args__ = (UniqueConstraint("project", "extract_datetime", name="uq_extract"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(128), index=True)
    extract_datetime: Mapped[datetime] = mapped_column(DateTime)
    source_path: Mapped[str] = mapped_column(Text)
    omop_es_settings: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    omop_es_git_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    registered_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    exported_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    study_links: Mapped[list[ExtractStudy]] = relationship(back_populates="extract")

    @property
    def partition_key(self) -> str:
        return extract_partition_key(self.project, self.extract_datetime)


class Study(Base):
    """One imaging study of one project; reused by every later extract of that project."""

    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint(
            "project", "mrn", "accession_number", "study_uid", "series_uid", name="uq_study"
        ),
        Index("ix_studies_project_status", "project", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(128))
    mrn: Mapped[str] = mapped_column(String(64))
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str] = mapped_column(String(128), default="")
    series_uid: Mapped[str] = mapped_column(String(128), default="")
    # Given by a CSV extract: the pseudonymous PatientID the researchers know ('' = hash the MRN).
    participant_id: Mapped[str] = mapped_column(String(64), default="")
    study_datetime: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.QUEUED.value)
    status_updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    waiting_for: Mapped[str | None] = mapped_column(Text, nullable=True)
    not_before: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    archive: Mapped[str | None] = mapped_column(String(64), nullable=True)

    retrieved_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    anonymised_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    exported_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    pseudo_study_uid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    pseudo_patient_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Non-identifying counts from retrieval / de-identification (instances, filter reasons).
    details: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)

    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    extract_links: Mapped[list[ExtractStudy]] = relationship(back_populates="study")

    @property
    def partition_key(self) -> str:
        return study_partition_key(self.project, self.id)


class ExtractStudy(Base):
    """A study as listed by one extract, with that extract's procedure_occurrence_id."""

    __tablename__ = "extract_studies"
    __table_args__ = (
        UniqueConstraint("extract_id", "procedure_occurrence_id", name="uq_extract_procedure"),
        Index("ix_extract_studies_study", "study_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    extract_id: Mapped[int] = mapped_column(ForeignKey("extracts.id", ondelete="CASCADE"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    procedure_occurrence_id: Mapped[int] = mapped_column(BigInteger)

    extract: Mapped[Extract] = relationship(back_populates="study_links")
    study: Mapped[Study] = relationship(back_populates="extract_links")


class StudyExport(Base):
    """A study delivered to one destination: the record that makes uploads exactly-once."""

    __tablename__ = "study_exports"
    __table_args__ = (UniqueConstraint("study_id", "destination", name="uq_study_export"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    destination: Mapped[str] = mapped_column(String(255))
    instances: Mapped[int] = mapped_column(Integer, default=0)  # the destination holds, in all
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # sent by the latest delivery
    exported_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # 1 for the first delivery; each re-delivery of a topped-up study (or a forced resend) adds 1.
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class DeliveredInstance(Base):
    """An instance a destination holds of a study (by its pseudonymous file name) and the
    delivery revision that sent it: a topped-up study's new instances are those not listed."""

    __tablename__ = "delivered_instances"
    __table_args__ = (UniqueConstraint("export_id", "name", name="uq_delivered_instance"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    export_id: Mapped[int] = mapped_column(ForeignKey("study_exports.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    revision: Mapped[int] = mapped_column(Integer)


class UploadAttempt(Base):
    """One attempt to send a study to a destination, written before anything is sent and closed
    after. An attempt never closed was cut off (its process died, maybe after the destination had
    everything and before ``study_exports`` said so): the next attempt is flagged as a resend."""

    __tablename__ = "upload_attempts"
    __table_args__ = (Index("ix_upload_attempts_study", "study_id", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    destination: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)  # sent | failed
    resend: Mapped[bool] = mapped_column(Boolean, default=False)


class StudyDeidSummary(Base):
    """What de-identification did to a study, counted by the engine as it ran (attributes with
    the operation applied, filters, refusals, checks, tag-operation files with their SHA-256):
    the per-study part of the extract's de-identification report. Tags, reasons and counts only,
    never a value. Replaced whenever the study is de-identified again."""

    __tablename__ = "study_deid_summaries"

    study_id: Mapped[int] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    summary: Mapped[dict[str, object]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ProjectSalt(Base):
    """Each project's random hashing salt: created once, never logged, never in git."""

    __tablename__ = "project_salts"

    project: Mapped[str] = mapped_column(String(128), primary_key=True)
    salt: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ArchiveRateLimit(Base):
    """The query rate of one archive, shared by every VOXL process and host: on PostgreSQL
    ``updated_at`` is the last query slot granted (reserved under a row lock, see
    ``vna/rate.py``). ``override_qps``, set by `voxl archives rate`, wins over the configured rate
    while it is set."""

    __tablename__ = "archive_rate_limits"

    archive: Mapped[str] = mapped_column(String(64), primary_key=True)
    configured_qps: Mapped[float] = mapped_column(Float)
    override_qps: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens: Mapped[float] = mapped_column(Float, default=1.0)  # unused since slots replaced it
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
