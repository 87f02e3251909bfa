"""Privacy class 9, configuration: project regexes match in linear time, and paths a project names
stay inside their folders, so a hostile or careless definition can neither hang a worker nor make
VOXL read (and quote) or write a file elsewhere. `voxl check-config` refuses each such definition
with an error that names the file and the field and never quotes a file outside the registry."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from tests.helpers.deid import make_engine, make_project
from tests.helpers.projects import MINIMAL_TAG_OPERATIONS, write_project
from voxl_assets.cli import main
from voxl_assets.confinement import PathEscapeError, check_relative_name, confined_path
from voxl_assets.deid.engine import FilterReason
from voxl_assets.deid.operations import TagOperationsError, load_policy
from voxl_assets.project_config import ProjectConfigError, load_project
from voxl_assets.project_regex import ProjectRegexError, compile_project_regex

# Patterns that make a backtracking engine take exponential time on a near-miss.
CATASTROPHIC = ["(a+)+$", "(x|x)*y", "(a|aa)+$", "(a*)*b", "^(a|a?)+$", "(.*a){12}$"]
# Patterns RE2 cannot compile: backreferences, look-around, possessive and atomic groups.
UNSUPPORTED = [r"(a)\1", "foo(?=bar)", "(?<!x)y", "(?<=x)y", "a++", "(?>a)", "x" * 1001]
# Lines of a file outside the registry; none of them may appear in any error.
OUTSIDE_SECRET = "PATIENT SMITH^JOHN MRN 47000022\nnotes: [unclosed, {also: unclosed\n\tTAB-LINE"
SECRET_FRAGMENTS = ["SMITH", "47000022", "unclosed", "TAB-LINE", "PATIENT"]


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    projects = tmp_path / "registry"
    write_project(projects)
    monkeypatch.setenv("VOXL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(projects))
    monkeypatch.delenv("VOXL_LOCAL_DESTINATION_ROOT", raising=False)
    monkeypatch.delenv("VOXL_ARCHIVES_FILE", raising=False)
    return projects


@pytest.fixture
def outside_secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "notes.txt"
    secret.parent.mkdir()
    secret.write_text(OUTSIDE_SECRET)
    return secret


def _edit(registry: Path, change: dict[str, Any]) -> Path:
    path = registry / "test-extract-uclh-omop-cdm.yaml"
    definition = yaml.safe_load(path.read_text())
    for key, value in change.items():
        definition[key] = {**definition.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(definition))
    return path


def _check_config(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check-config"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _assert_refused(code: int, output: str, *expected: str) -> None:
    assert code == 2, output
    for text in expected:
        assert text in output, (text, output)
    for fragment in SECRET_FRAGMENTS:
        assert fragment not in output, (fragment, output)


# --- regexes: linear time -------------------------------------------------------------------


def _header(description: str = "", manufacturer: str = "ACME") -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SeriesDescription = description
    ds.Manufacturer = manufacturer
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    return ds


@pytest.mark.timeout(60)  # a hang guard: a backtracking engine needs ages for any one of these
@pytest.mark.filterwarnings("ignore:The value length")  # a hostile header: longer than LO allows
@pytest.mark.parametrize("pattern", CATASTROPHIC)
@pytest.mark.parametrize("length", [64, 100_000])
def test_catastrophic_description_patterns_are_matched_in_linear_time(
    tmp_path: Path, pattern: str, length: int
) -> None:
    engine = make_engine(tmp_path, make_project(series_filters={"description_patterns": [pattern]}))
    near_miss = "a" * (length - 1) + "!"
    assert engine.instance_filter(_header(near_miss)) is None
    assert bool(re.search(pattern, "a" * 8, re.IGNORECASE)) == (
        engine.instance_filter(_header("a" * 8)) is FilterReason.SERIES_DESCRIPTION
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_manufacturer_regexes_are_matched_in_linear_time(
    tmp_path: Path, pattern: str
) -> None:
    project = make_project(allowed_manufacturers=[{"regex": pattern}])
    engine = make_engine(tmp_path, project)
    assert engine.instance_filter(_header(manufacturer="a" * 63 + "!")) is FilterReason.MANUFACTURER
    override = tmp_path / "ops" / "override.yaml"
    override.parent.mkdir()
    override.write_text(yaml.safe_dump({"manufacturer": pattern, "operations": []}))
    (override.parent / "base.yaml").write_text(yaml.safe_dump(MINIMAL_TAG_OPERATIONS))
    policy = load_policy(override.parent, ["base.yaml"], ["override.yaml"])
    assert policy.for_manufacturer("x" * 100_000 + "!") is policy.base


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="aAxXyYlLoOcCiIsSeErRzZ !-_0123456789éÜ", max_size=40))
def test_shipped_patterns_mean_the_same_under_re2(text: str) -> None:
    """RE2 is a different engine: the patterns projects actually use behave as they did."""
    for pattern in ["locali[sz]er", "scout", "(?i)philips", ".*", "^(SE|SR)\\d*$", "x{2,3}y?"]:
        for ignore_case in (False, True):
            flags = re.IGNORECASE if ignore_case else 0
            expected = re.search(pattern, text, flags) is not None
            assert compile_project_regex(pattern, ignore_case=ignore_case).search(text) is expected


@pytest.mark.parametrize("pattern", UNSUPPORTED)
def test_a_pattern_re2_cannot_take_is_refused(pattern: str) -> None:
    with pytest.raises(ProjectRegexError):
        compile_project_regex(pattern)


@pytest.mark.parametrize("pattern", UNSUPPORTED)
@pytest.mark.parametrize(
    "where,field",
    [
        ("series_filters", "series_filters.description_patterns.1"),
        ("allowed_manufacturers", "allowed_manufacturers.0.regex"),
        ("override", "manufacturer"),
    ],
)
def test_check_config_refuses_a_pattern_re2_cannot_take(
    registry: Path, capsys: pytest.CaptureFixture[str], pattern: str, where: str, field: str
) -> None:
    if where == "series_filters":
        path = _edit(registry, {"series_filters": {"description_patterns": ["scout", pattern]}})
    elif where == "allowed_manufacturers":
        path = _edit(registry, {"allowed_manufacturers": [{"regex": pattern}]})
    else:
        path = registry / "tag-operations" / "acme.yaml"
        path.write_text(yaml.safe_dump({"manufacturer": pattern, "operations": []}))
        _edit(registry, {"tag_operations": {"manufacturer_overrides": ["acme.yaml"]}})
    code, output = _check_config(capsys)
    _assert_refused(
        code, output, str(path), field, "linear time" if len(pattern) < 1000 else "1000"
    )
    with pytest.raises(ProjectConfigError, match=re.escape(field)):
        load_project(registry / "test-extract-uclh-omop-cdm.yaml")


# --- paths: tag-operation files -------------------------------------------------------------


@pytest.mark.parametrize("field", ["base", "manufacturer_overrides"])
@pytest.mark.parametrize("kind", ["absolute", "dotdot", "dotdot-inside", "symlink", "symlink-dir"])
def test_check_config_refuses_tag_operation_files_outside_the_registry(
    registry: Path,
    outside_secret: Path,
    capsys: pytest.CaptureFixture[str],
    field: str,
    kind: str,
) -> None:
    ops = registry / "tag-operations"
    if kind == "absolute":
        name = str(outside_secret)
    elif kind == "dotdot":
        name = f"../../outside/{outside_secret.name}"
    elif kind == "dotdot-inside":  # even one that would come back inside is refused as written
        name = "manufacturer-overrides/../base.yaml"
    elif kind == "symlink":
        (ops / "innocent.yaml").symlink_to(outside_secret)
        name = "innocent.yaml"
    else:
        (ops / "vendors").symlink_to(outside_secret.parent, target_is_directory=True)
        name = f"vendors/{outside_secret.name}"
    names = ["base.yaml", name] if field == "base" else [name]
    path = _edit(registry, {"tag_operations": {field: names}})
    index = 1 if field == "base" else 0
    code, output = _check_config(capsys)
    _assert_refused(code, output, str(path), f"tag_operations.{field}.{index}")
    assert ("symbolic link" in output) == kind.startswith("symlink")


def test_a_project_file_that_links_outside_the_registry_is_refused_unread(
    registry: Path, outside_secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (registry / "evil.yaml").symlink_to(outside_secret)
    code, output = _check_config(capsys)
    _assert_refused(code, output, str(registry / "evil.yaml"), "symbolic link")


def test_a_registry_reached_through_a_symbolic_link_still_works(
    registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(registry, target_is_directory=True)
    monkeypatch.setenv("VOXL_PROJECTS_DIR", str(alias))
    assert main(["check-config"]) == 0


def test_yaml_errors_give_the_position_not_the_text(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even inside the registry an error says where, not what: PyYAML would quote the line."""
    broken = registry / "tag-operations" / "base.yaml"
    broken.write_text("operations:\n  - {keyword: Modality, op: keep}\n" + OUTSIDE_SECRET)
    code, output = _check_config(capsys)
    _assert_refused(code, output, str(broken), "not valid YAML", "line ")
    broken.write_bytes(b"\xff\xfe" + OUTSIDE_SECRET.encode("utf-16-le"))
    code, output = _check_config(capsys)
    _assert_refused(code, output, str(broken), "not a UTF-8 text file")


_MARKER = "QZXMRN4700"
_YAML_JUNK = st.text(alphabet=" \t\n:-[]{},'\"#&*!|>%@`?\\abc019_^.=", max_size=60)


@settings(max_examples=300, deadline=None)
@given(before=_YAML_JUNK, after=_YAML_JUNK, quote=st.sampled_from(["", "'", '"', "!", "*", "&"]))
def test_no_yaml_error_quotes_the_file_whatever_it_holds(
    tmp_path_factory: Any, before: str, after: str, quote: str
) -> None:
    """Any content, any position of an identifier in it, any YAML construct around it (tags,
    aliases, anchors, quotes): an error names the file and a position, never the text."""
    from voxl_assets.config_files import ConfigFileError, read_yaml

    path = tmp_path_factory.mktemp("yaml") / "file.yaml"
    path.write_text(before + quote + _MARKER + after, encoding="utf-8")
    try:
        read_yaml(path)
    except ConfigFileError as exc:
        assert _MARKER not in str(exc) and str(path) in str(exc)


def test_the_archives_file_is_never_quoted(
    registry: Path,
    outside_secret: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("VOXL_ARCHIVES_FILE", str(outside_secret))
    code, output = _check_config(capsys)
    _assert_refused(code, output, str(outside_secret), "not valid YAML")


def test_load_policy_refuses_names_that_leave_its_folder(
    registry: Path, outside_secret: Path
) -> None:
    """The de-identification engine loads the files again at run time: the same rule holds."""
    ops = registry / "tag-operations"
    (ops / "linked.yaml").symlink_to(outside_secret)
    for name in [str(outside_secret), "../../outside/notes.txt", "linked.yaml"]:
        with pytest.raises(TagOperationsError) as caught:
            load_policy(ops, ["base.yaml", name], [])
        assert not any(fragment in str(caught.value) for fragment in SECRET_FRAGMENTS)
        with pytest.raises(TagOperationsError):
            load_policy(ops, ["base.yaml"], [name])


# --- paths: local destinations --------------------------------------------------------------


@pytest.mark.parametrize("role", ["images", "ehr"])
@pytest.mark.parametrize("kind", ["absolute", "dotdot", "home", "symlink"])
def test_check_config_refuses_local_destinations_outside_their_root(
    registry: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    role: str,
    kind: str,
) -> None:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    target = {
        "absolute": str(tmp_path / "elsewhere"),
        "dotdot": "delivered/../../elsewhere",
        "home": "~/delivered",
        "symlink": "delivered",
    }[kind]
    if kind == "symlink":
        (home / "delivered").symlink_to(tmp_path, target_is_directory=True)
    path = _edit(registry, {"destinations": {role: {"kind": "local", "path": target}}})
    code, output = _check_config(capsys)
    _assert_refused(code, output, str(path), f"destinations.{role}.path")


def test_local_destinations_stay_under_the_documented_root(
    registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxl_assets.project_config import LocalDirectoryDestination
    from voxl_assets.upload.base import UploadError
    from voxl_assets.upload.factory import make_file_uploader

    root = tmp_path / "staging-root"
    monkeypatch.setenv("VOXL_LOCAL_DESTINATION_ROOT", str(root))
    uploader = make_file_uploader(LocalDirectoryDestination(kind="local", path="dsh/ehr"))
    assert uploader is not None and uploader.root == root.resolve() / "dsh" / "ehr"  # type: ignore[attr-defined]
    assert (root / "dsh" / "ehr").is_dir()  # made when the uploader was built
    # A link planted after check-config ran is caught when the uploader is built.
    shutil.rmtree(root / "dsh")
    (root / "dsh").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UploadError, match="outside"):
        make_file_uploader(LocalDirectoryDestination(kind="local", path="dsh/ehr"))


# --- the path rule as a property ------------------------------------------------------------

_PART = st.text(alphabet="abcXYZ09_-. é", min_size=1, max_size=8).filter(
    lambda part: part not in {".", ".."} and part.strip()
)


@given(parts=st.lists(_PART, min_size=1, max_size=5), dotdot=st.integers(0, 4))
def test_any_name_with_dotdot_or_absolute_is_refused(parts: list[str], dotdot: int) -> None:
    escaping = [*parts[:dotdot], "..", *parts[dotdot:]]
    for name in ("/".join(escaping), "/" + "/".join(parts), "//" + "/".join(parts)):
        with pytest.raises(ValueError):
            check_relative_name(name)
    plain = "/".join(parts)
    assert check_relative_name(plain) == plain


@settings(max_examples=50)
@given(parts=st.lists(_PART, min_size=1, max_size=4))
def test_plain_names_stay_inside_their_root(tmp_path_factory: Any, parts: list[str]) -> None:
    root = tmp_path_factory.mktemp("root")
    resolved = confined_path(root, "/".join(parts))
    assert resolved.is_relative_to(root.resolve())
    with pytest.raises(PathEscapeError):
        confined_path(root, "../" + "/".join(parts))
