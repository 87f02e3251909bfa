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

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from voxl_assets import settings
from voxl_assets.confinement import PathEscapeError, check_relative_name, confined_path
from voxl_assets.project_regex import ProjectRegexError, compile_project_regex

SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
TAG_OPERATIONS_DIRNAME = "tag-operations"


def slugify(name: str) -> str:
    """Project slug from OMOP ES's ``cdm_source_name``: lower case, non-alphanumeric runs to '-'."""
    return re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(value: str) -> str:
    """A regex VOXL can match in linear time (RE2: see ``voxl_assets/project_regex.py``)."""
    try:
        compile_project_regex(value)
    except ProjectRegexError as exc:
        raise ValueError(str(exc)) from None
    return value


ProjectPattern = Annotated[str, AfterValidator(_check_regex)]
TagOperationFileName = Annotated[str, AfterValidator(check_relative_name)]


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

    base: list[TagOperationFileName] = Field(min_length=1)
    manufacturer_overrides: list[TagOperationFileName] = Field(default_factory=list)


class AllowedManufacturer(_Strict):
    regex: ProjectPattern = Field(description="RE2 regex searched in Manufacturer")
    exclude_series_numbers: list[int] = Field(default_factory=list)


class SeriesFilters(_Strict):
    description_patterns: list[ProjectPattern] = Field(
        default_factory=list,
        description=(
            "Case-insensitive RE2 regexes; a series whose SeriesDescription matches is dropped"
        ),
    )
    min_instances: int = Field(default=1, ge=1)


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
    path: Annotated[str, AfterValidator(check_relative_name)] = Field(
        description=(
            "Folder, relative to VOXL_LOCAL_DESTINATION_ROOT (default VOXL_HOME); absolute paths "
            "and '..' are refused"
        )
    )


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


_DESTINATION_KINDS = {"none", "local", "dicomweb", "azure_dicom", "ftps", "sftp", "azure_blob"}


RedeliverTopUp = Literal["never", "replace", "add"]


class Destinations(_Strict):
    images: ImageDestination = NoDestination()
    ehr: EhrDestination = NoDestination()
    redeliver_topped_up: RedeliverTopUp = Field(
        default="never",
        description=(
            "a delivered study that later gains instances (a --top-up-cache run found them): "
            "never = keep the first delivery; replace = send the whole study again, replacing "
            "the destination's copy; add = send only the new instances (file destinations: "
            "<pseudonymous study UID>.rev<N>.zip beside the first zip)"
        ),
    )


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
        loc = list(error["loc"])
        if len(loc) > 3 and loc[0] == "destinations" and loc[2] in _DESTINATION_KINDS:
            del loc[2]  # pydantic names the union member ('local'); the YAML has no such level
        field = ".".join(str(part) for part in loc) or "(top level)"
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
        ProjectConfigError: the YAML is unreadable or invalid, a tag-operation file it names is
            missing or outside ``tag-operations/``, or a local destination leaves its root; the
            message names ``path`` and the field, and never quotes a file outside the registry.
    """
    from voxl_assets.config_files import ConfigFileError, read_yaml

    if not path.resolve().is_relative_to(path.parent.resolve()):
        raise ProjectConfigError(
            f"{path}: a symbolic link to a file outside the registry folder: refused"
        )
    try:
        raw = read_yaml(path)
    except ConfigFileError as exc:
        raise ProjectConfigError(str(exc)) from None
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
            where = f"{path}: tag_operations.{field}.{index}"
            try:
                resolved = confined_path(ops_dir, name)
            except PathEscapeError as exc:
                raise ProjectConfigError(f"{where}: {exc}") from None
            if not resolved.is_file():
                raise ProjectConfigError(f"{where}: file {ops_dir / name} does not exist")
    _check_local_destinations(path, project)
    _check_tag_operations(path, project)
    return project


def local_destination_path(
    destination: LocalDirectoryDestination, root: Path | None = None
) -> Path:
    """Where a local destination writes: its ``path`` under ``root`` (default
    ``VOXL_LOCAL_DESTINATION_ROOT``).

    Raises:
        PathEscapeError: the folder resolves outside the root (through a symbolic link).
    """
    return confined_path(root or settings.local_destination_root(), destination.path)


def _check_local_destinations(path: Path, project: ProjectDefinition) -> None:
    for role in ("images", "ehr"):
        destination = getattr(project.destinations, role)
        if isinstance(destination, LocalDirectoryDestination):
            try:
                local_destination_path(destination)
            except PathEscapeError as exc:
                raise ProjectConfigError(f"{path}: destinations.{role}.path: {exc}") from None


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
        """The project's tag-operation files, resolved inside ``tag-operations/``.

        Raises:
            PathEscapeError: a name resolves outside that folder.
        """
        ops_dir = tag_operations_dir(self.directory)
        files = project.tag_operations
        return (
            [confined_path(ops_dir, name) for name in files.base],
            [confined_path(ops_dir, name) for name in files.manufacturer_overrides],
        )


def json_schema() -> dict[str, object]:
    """The JSON schema of a project definition, for editors (``project_definitions/schema.json``)."""
    schema: dict[str, object] = ProjectDefinition.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "VOXL project definition"
    return schema
