"""The project registry: one YAML per research project in ``project_definitions/``.

A project is registered by a pull request that adds its YAML; an extract whose project has no file
is not processed. The YAML is validated by the pydantic models below. Every error names the file and
the field, so a reviewer can fix it without reading code. Secrets never appear in the YAML: a
destination names the *environment variables* that hold them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from voxl_assets import settings

SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
TAG_OPERATIONS_DIRNAME = "tag-operations"


def slugify(name: str) -> str:
    """Project slug from OMOP ES's ``cdm_source_name``: lower case, non-alphanumeric runs to '-'."""
    return re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from exc
    return value


class ProjectInfo(_Strict):
    slug: Annotated[str, Field(pattern=SLUG_PATTERN)]
    name: str
    modalities: list[Annotated[str, Field(pattern=r"^[A-Z]{2,16}$")]] = Field(min_length=1)
    priority: int = Field(
        default=0,
        ge=-10,
        le=10,
        description="Higher first: the project's study runs are dequeued before lower ones",
    )


class TagOperationFiles(_Strict):
    """Tag-operation files, relative to ``project_definitions/tag-operations/``."""

    base: list[str] = Field(min_length=1)
    manufacturer_overrides: list[str] = Field(default_factory=list)


class AllowedManufacturer(_Strict):
    regex: str
    exclude_series_numbers: list[int] = Field(default_factory=list)

    _regex = field_validator("regex")(_check_regex)


class SeriesFilters(_Strict):
    description_patterns: list[str] = Field(
        default_factory=list,
        description="Case-insensitive regexes; a series whose SeriesDescription matches is dropped",
    )
    min_instances: int = Field(default=1, ge=1)

    @field_validator("description_patterns")
    @classmethod
    def _patterns_compile(cls, values: list[str]) -> list[str]:
        for value in values:
            _check_regex(value)
        return values


class DeidOptions(_Strict):
    """Choices a project makes about what survives de-identification."""

    dates: Literal["keep", "truncate_to_year", "truncate_to_month", "shift"] = "keep"
    date_shift_days_max: int = Field(default=0, ge=0, le=3650)
    allow_secondary_capture: bool = False
    allow_burned_in_annotation: bool = False
    blank_ultrasound_outside_regions: bool = False


# --- destinations -----------------------------------------------------------------------------


class NoDestination(_Strict):
    kind: Literal["none"] = "none"


class LocalDirectoryDestination(_Strict):
    """A folder on this machine (the demo's destination, or a staging area another tool ships)."""

    kind: Literal["local"]
    path: str = Field(description="Folder; a relative path is taken under VOXL_HOME")


class DicomWebDestination(_Strict):
    kind: Literal["dicomweb"]
    url: str
    username_env: str | None = None
    password_env: str | None = None
    token_env: str | None = None
    verify_tls: bool = True
    ca_bundle: str | None = None
    batch_size: int = Field(default=50, ge=1, description="most instances per STOW-RS request")
    batch_max_mib: int = Field(
        default=32,
        ge=1,
        description="most MiB per STOW-RS request (one bigger instance goes alone)",
    )


class AzureDicomDestination(_Strict):
    kind: Literal["azure_dicom"]
    url: str
    tenant_id_env: str
    client_id_env: str
    client_secret_env: str
    scope: str = "https://dicom.healthcareapis.azure.com/.default"
    batch_size: int = Field(default=50, ge=1, description="most instances per STOW-RS request")
    batch_max_mib: int = Field(
        default=32,
        ge=1,
        description="most MiB per STOW-RS request (one bigger instance goes alone)",
    )


class FtpsDestination(_Strict):
    kind: Literal["ftps"]
    host: str
    port: int = 21
    username_env: str
    password_env: str
    remote_root: str = "/"
    verify_tls: bool = True
    ca_bundle: str | None = None


def check_known_host_key(line: str) -> str:
    """A known_hosts line whose base64 blob really holds a key of the type it names."""
    parts = line.split()
    if parts and parts[0].startswith("@"):
        raise ValueError("@cert-authority/@revoked lines are not supported: pin the host key")
    if len(parts) < 3:
        raise ValueError("must look like '<host> <key type> <base64 key>' (a known_hosts line)")
    try:
        blob = base64.b64decode(parts[2], validate=True)
    except binascii.Error:
        raise ValueError("the key is not valid base64 (copy it from ssh-keyscan)") from None
    length = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if blob[4 : 4 + length] != parts[1].encode():
        raise ValueError(f"the base64 key is not a {parts[1]} key (copy the whole line again)")
    return line


class SftpDestination(_Strict):
    kind: Literal["sftp"]
    host: str
    port: int = 22
    username_env: str
    private_key_path_env: str
    known_host_key: str = Field(
        description="The server's host key as a known_hosts line: '[host]:port keytype base64'"
    )
    remote_root: str = "."
    _known_host_key = field_validator("known_host_key")(check_known_host_key)
    ssh_client: Literal["auto", "openssh", "paramiko"] = Field(
        default="auto",
        description=(
            "SSH client carrying the SFTP session: 'openssh' (the ssh binary, fastest), "
            "'paramiko' (pure Python), or 'auto' (openssh when ssh is installed)"
        ),
    )


class AzureBlobDestination(_Strict):
    kind: Literal["azure_blob"]
    container: str
    connection_string_env: str
    prefix: str = ""
    max_concurrency: int = Field(default=4, ge=1)


ImageDestination = Annotated[
    NoDestination
    | LocalDirectoryDestination
    | DicomWebDestination
    | AzureDicomDestination
    | FtpsDestination
    | SftpDestination
    | AzureBlobDestination,
    Field(discriminator="kind"),
]
EhrDestination = Annotated[
    NoDestination
    | LocalDirectoryDestination
    | FtpsDestination
    | SftpDestination
    | AzureBlobDestination,
    Field(discriminator="kind"),
]


class Destinations(_Strict):
    images: ImageDestination = NoDestination()
    ehr: EhrDestination = NoDestination()


class ProjectDefinition(_Strict):
    project: ProjectInfo
    tag_operations: TagOperationFiles
    series_filters: SeriesFilters = SeriesFilters()
    allowed_manufacturers: list[AllowedManufacturer] = Field(
        default_factory=lambda: [AllowedManufacturer(regex=".*")]
    )
    deid: DeidOptions = DeidOptions()
    destinations: Destinations = Destinations()

    @property
    def slug(self) -> str:
        return self.project.slug


class ProjectConfigError(ValueError):
    """A project definition is invalid; the message names the file and the field."""


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid project definition"]
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against project_definitions/schema.json)"
        lines.append(f"  - {field}: {message}")
    return "\n".join(lines)


def tag_operations_dir(projects_dir: Path) -> Path:
    return projects_dir / TAG_OPERATIONS_DIRNAME


def load_project(path: Path) -> ProjectDefinition:
    """Read and validate one project YAML.

    Raises:
        ProjectConfigError: the YAML is unreadable or invalid, or a tag-operation file it names
            is missing; the message names ``path`` and the field.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProjectConfigError(f"{path}: cannot read YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ProjectConfigError(f"{path}: expected a mapping at the top level")
    try:
        project = ProjectDefinition.model_validate(raw)
    except ValidationError as exc:
        raise ProjectConfigError(_format_validation_error(path, exc)) from exc
    ops_dir = tag_operations_dir(path.parent)
    files = project.tag_operations
    for field, names in (
        ("base", files.base),
        ("manufacturer_overrides", files.manufacturer_overrides),
    ):
        for index, name in enumerate(names):
            if not (ops_dir / name).is_file():
                raise ProjectConfigError(
                    f"{path}: tag_operations.{field}.{index}: file {ops_dir / name} does not exist"
                )
    _check_tag_operations(path, project)
    return project


def _check_tag_operations(path: Path, project: ProjectDefinition) -> None:
    """Parse the tag-operation files now, so `voxl check-config` catches their mistakes too."""
    from voxl_assets.deid.operations import TagOperationsError, load_policy

    files = project.tag_operations
    try:
        load_policy(tag_operations_dir(path.parent), files.base, files.manufacturer_overrides)
    except TagOperationsError as exc:
        raise ProjectConfigError(f"{path}: tag_operations: {exc}") from exc


def project_files(projects_dir: Path | None = None) -> Iterator[Path]:
    directory = projects_dir or settings.projects_dir()
    yield from sorted(directory.glob("*.yaml"))


class ProjectRegistry:
    """Every registered project, keyed by slug."""

    def __init__(self, projects: dict[str, ProjectDefinition], directory: Path) -> None:
        self._projects = projects
        self.directory = directory

    @classmethod
    def load(cls, projects_dir: Path | None = None) -> ProjectRegistry:
        """Load and validate every ``*.yaml`` in the registry folder.

        Raises:
            ProjectConfigError: for the first invalid file, or two files with the same slug.
        """
        directory = projects_dir or settings.projects_dir()
        projects: dict[str, ProjectDefinition] = {}
        origin: dict[str, Path] = {}
        for path in project_files(directory):
            project = load_project(path)
            if project.slug in projects:
                raise ProjectConfigError(
                    f"{path}: project.slug '{project.slug}' is already defined in {origin[project.slug]}"
                )
            projects[project.slug] = project
            origin[project.slug] = path
        return cls(projects, directory)

    def get(self, slug: str) -> ProjectDefinition | None:
        return self._projects.get(slug)

    def priority(self, slug: str) -> int:
        """The project's queue priority (0 for an unknown project)."""
        project = self._projects.get(slug)
        return project.project.priority if project else 0

    def __contains__(self, slug: object) -> bool:
        return slug in self._projects

    def slugs(self) -> list[str]:
        return sorted(self._projects)

    def tag_operation_paths(self, project: ProjectDefinition) -> tuple[list[Path], list[Path]]:
        ops_dir = tag_operations_dir(self.directory)
        files = project.tag_operations
        return (
            [ops_dir / name for name in files.base],
            [ops_dir / name for name in files.manufacturer_overrides],
        )


def json_schema() -> dict[str, object]:
    """The JSON schema of a project definition, for editors (``project_definitions/schema.json``)."""
    schema: dict[str, object] = ProjectDefinition.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "VOXL project definition"
    return schema
