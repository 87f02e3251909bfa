"""The `voxl` command: check project definitions, register extracts, report status.

Exit codes: 0 success, 1 the operation failed (e.g. a run failed), 2 bad input or configuration.

Each command imports what it needs when it runs (Dagster, pandas, pydantic, pynetdicom take
seconds to load), so `voxl --help`, `voxl status` and input errors answer at once. Dagster's
event log goes to the command's log file (``voxl_assets/terminal.py``), not the terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from voxl_assets import settings
from voxl_assets.terminal import CommandLog

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from voxl_assets.cohort.extract_reader import ExtractSummary
    from voxl_assets.db import VoxlDatabase
    from voxl_assets.project_config import ProjectDefinition, ProjectRegistry

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

_log: CommandLog | None = None  # the running command's log file (set by ``main``)


def _error(message: str) -> None:
    """One line; it names the log file when the command wrote one (Dagster's events, the stack)."""
    where = f" (log: {_log.path})" if _log is not None and _log.written() else ""
    print(f"voxl: error: {message}{where}", file=sys.stderr)


def cmd_check_config(args: argparse.Namespace) -> int:
    directory = Path(args.projects_dir) if args.projects_dir else settings.projects_dir()
    from voxl_assets.project_config import ProjectConfigError, load_project, project_files

    failures = 0
    paths = list(project_files(directory))
    if not paths:
        _error(f"no project definitions (*.yaml) in {directory}")
        return EXIT_BAD_INPUT
    slugs: dict[str, Path] = {}
    for path in paths:
        try:
            project = load_project(path)
        except ProjectConfigError as exc:
            failures += 1
            print(str(exc), file=sys.stderr)
            continue
        if project.slug in slugs:
            failures += 1
            print(
                f"{path}: project.slug '{project.slug}' already defined in {slugs[project.slug]}",
                file=sys.stderr,
            )
            continue
        slugs[project.slug] = path
        problem = _sftp_client_problem(project)
        if problem:
            failures += 1
            print(f"{path}: {problem}", file=sys.stderr)
            continue
        print(f"ok  {path.name}: {project.slug} ({project.project.name})")
    if failures:
        _error(f"{failures} of {len(paths)} project definitions are invalid")
        return EXIT_BAD_INPUT
    print(f"{len(paths)} project definitions valid")
    return _check_archives()


def _sftp_client_problem(project: ProjectDefinition) -> str | None:
    """An SFTP destination that asks for OpenSSH where ``ssh`` is missing; prints the fallback."""
    from voxl_assets.upload.openssh import ssh_binary

    for role in ("images", "ehr"):
        destination = getattr(project.destinations, role)
        if destination.kind != "sftp" or ssh_binary() is not None:
            continue
        field = f"destinations.{role}.ssh_client"
        if destination.ssh_client == "openssh":
            return f"{field} is openssh but the OpenSSH client is not installed (openssh-client)"
        if destination.ssh_client == "auto":
            print(f"    {field}: no ssh installed, paramiko will carry SFTP (slower)")
    return None


def _check_archives() -> int:
    """Validate ``VOXL_ARCHIVES_FILE`` when set, and show the archives in the order they are asked."""
    from voxl_assets.definitions import deployment_resources
    from voxl_assets.vna.archives import ArchiveConfigError, store_scp_warnings

    try:
        # The deployment's VNA resource with its variables read, as a run would see it.
        vna = deployment_resources()["vna"].process_config_and_initialize()
        configs = vna.archive_configs()
    except ArchiveConfigError as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    for config in configs:
        window = config.window.describe() if config.window else "always open"
        print(f"archive {config.name}: {config.settings.kind}, {window}")
    for warning in store_scp_warnings(configs):
        print(f"    warning: {warning}")
    return EXIT_OK


def cmd_populate(args: argparse.Namespace) -> int:
    path = Path(args.path).resolve()
    if not path.exists():
        _error(f"{path}: no such extract directory or CSV file")
        return EXIT_BAD_INPUT
    from voxl_assets.cohort.extract_reader import ExtractError, read_any_summaries
    from voxl_assets.project_config import ProjectConfigError, ProjectRegistry

    try:
        summaries = read_any_summaries(path)
        registry = ProjectRegistry.load()
    except (ExtractError, ProjectConfigError) as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    from dagster import DagsterInstance

    from voxl_assets.dagster_home import ensure_dagster_home
    from voxl_assets.db import shared_database

    ensure_dagster_home()
    database = shared_database()
    instance = DagsterInstance.get()
    # A CSV file may hold several extracts: each goes in on its own; the worst outcome decides
    # the exit code (bad input over a failed run).
    outcomes = [_populate_one(database, instance, registry, summary, path) for summary in summaries]
    if EXIT_BAD_INPUT in outcomes:
        return EXIT_BAD_INPUT
    return EXIT_FAILED if EXIT_FAILED in outcomes else EXIT_OK


def _populate_one(
    database: VoxlDatabase,
    instance: DagsterInstance,
    registry: ProjectRegistry,
    summary: ExtractSummary,
    path: Path,
) -> int:
    """Register one extract and materialise its cohort messages; print its counts."""
    from voxl_assets.cohort.registration import ExtractConflict, load_registration, register
    from voxl_assets.orchestration import RunFailed, materialize_cohort
    from voxl_assets.terminal import phase_progress

    slug = summary.project_slug
    if slug not in registry:
        _error(
            f"project '{slug}' (from {path.name}) is not registered: add "
            f"project_definitions/{slug}.yaml by pull request first"
        )
        return EXIT_BAD_INPUT
    try:
        registration = register(database, summary, slug, replace_pending=True)
    except ExtractConflict as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    if registration.replaced:
        print(f"extract {registration.key}: replaces the registration from {registration.replaced}")
    try:
        with phase_progress(f"populate {registration.key}", _log):
            result = materialize_cohort(instance, registration.key, "cli-populate")
    except RunFailed as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT if exc.bad_input else EXIT_FAILED
    materialization = result.asset_materializations_for_node("cohort_messages")[0]
    print(f"extract {registration.key} (run {result.run_id})")
    for name, value in materialization.metadata.items():
        if name not in ("progress", "warnings"):
            print(f"  {name}: {value.value}")
    after = load_registration(database, registration.key)
    for warning in after.warnings if after else ():
        print(f"  warning: {warning}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from voxl_assets.status import read_archive_rates, read_statuses, render_table

    statuses = read_statuses(None, args.project)
    if args.project and not statuses:
        from voxl_assets.project_config import ProjectRegistry

        known = ProjectRegistry.load()
        if args.project not in known:
            _error(
                f"unknown project '{args.project}'; registered: {', '.join(known.slugs()) or 'none'}"
            )
            return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        print(render_table(statuses))
        rates = read_archive_rates()
        if rates:
            print("\nquery rates (global to every worker):")
        for rate in rates:
            print(f"  {rate.describe()}")
    return EXIT_OK


def cmd_archives_rate(args: argparse.Namespace) -> int:
    """Set an archive's query rate while workers run (they follow it at their next query)."""
    from voxl_assets.db import shared_database
    from voxl_assets.vna.rate import archive_rates, set_archive_rate

    if (args.qps is None) == (not args.clear):
        _error("give either a rate in queries per second or --clear")
        return EXIT_BAD_INPUT
    database = shared_database()
    known = {rate.archive for rate in archive_rates(database)} | _configured_archive_names()
    if args.name not in known:
        _error(
            f"unknown archive '{args.name}'; known: {', '.join(sorted(known)) or 'none'} "
            "(see `voxl check-config`)"
        )
        return EXIT_BAD_INPUT
    try:
        rate = set_archive_rate(database, args.name, None if args.clear else args.qps)
    except ValueError as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    print(rate.describe())
    return EXIT_OK


def _configured_archive_names() -> set[str]:
    """The archives this host's configuration names (none when it cannot be read)."""
    from voxl_assets.definitions import deployment_resources
    from voxl_assets.vna.archives import ArchiveConfigError

    try:
        vna = deployment_resources()["vna"].process_config_and_initialize()
        return {config.name for config in vna.archive_configs()}
    except (ArchiveConfigError, ValueError):
        return set()


def cmd_schema(_args: argparse.Namespace) -> int:
    from voxl_assets.project_config import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def _study_keys(
    project: str, extract: str | None, failed_only: bool
) -> tuple[list[str], list[str]]:
    """(study partition keys, extract partition keys) of a project, optionally one extract."""
    from sqlalchemy import select

    from voxl_assets.db import Extract, ExtractStudy, Study, StudyStatus, shared_database
    from voxl_assets.db.models import extract_partition_key, study_partition_key

    database = shared_database()
    with database.session() as session:
        extracts = [
            e
            for e in session.scalars(select(Extract).where(Extract.project == project))
            if extract is None
            or extract_partition_key(e.project, e.extract_datetime).endswith(extract)
        ]
        extract_keys = [extract_partition_key(e.project, e.extract_datetime) for e in extracts]
        query = (
            select(Study.id, Study.project)
            .join(ExtractStudy, ExtractStudy.study_id == Study.id)
            .where(ExtractStudy.extract_id.in_([e.id for e in extracts]))
            .distinct()
            .order_by(Study.id)
        )
        if failed_only:
            query = query.where(Study.status == StudyStatus.FAILED.value)
        keys = [
            study_partition_key(project_, study_id) for study_id, project_ in session.execute(query)
        ]
    return keys, extract_keys


def _registered_project(slug: str) -> tuple[ProjectRegistry, ProjectDefinition] | None:
    """The validated registry and its project ``slug``; None after a one-line error when it is
    not registered (refused from plain YAML first, before pydantic and pydicom load) or the
    registry does not validate."""
    declared = _declared_slugs()
    if declared is not None and slug not in declared:
        _error(f"project '{slug}' is not registered (see `voxl check-config`)")
        return None
    from voxl_assets.project_config import ProjectConfigError, ProjectRegistry

    try:
        registry = ProjectRegistry.load()
    except ProjectConfigError as exc:
        _error(str(exc))
        return None
    project = registry.get(slug)
    if project is None:
        _error(f"project '{slug}' is not registered (see `voxl check-config`)")
        return None
    return registry, project


def _declared_slugs() -> set[str] | None:
    """The ``project.slug`` of every definition, read as plain YAML: an unknown project is refused
    at once, before the registry is validated (which loads pydantic and pydicom). None when a file
    does not parse: the full validation then reports it."""
    import yaml

    slugs = set()
    for path in sorted(settings.projects_dir().glob("*.yaml")):
        try:
            document = yaml.safe_load(path.read_text())
            slugs.add(str(document["project"]["slug"]))
        except (yaml.YAMLError, OSError, KeyError, TypeError):
            return None
    return slugs


def cmd_backfill(args: argparse.Namespace) -> int:
    import time
    import uuid

    registered = _registered_project(args.project)
    if registered is None:
        return EXIT_BAD_INPUT
    registry = registered[0]
    keys, extract_keys = _study_keys(args.project, args.extract, args.failed_only)
    if not extract_keys:
        _error(
            f"no extract of project '{args.project}'"
            + (f" matches {args.extract}" if args.extract else "")
            + ": run `voxl populate` first"
        )
        return EXIT_BAD_INPUT
    if not keys:
        print("nothing to backfill: no matching studies")
        return EXIT_OK
    from dagster import AssetKey, DagsterInstance
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.storage.tags import PRIORITY_TAG

    from voxl_assets.dagster_home import ensure_dagster_home
    from voxl_assets.definitions import defs
    from voxl_assets.imaging.batches import TOP_UP_TAG

    ensure_dagster_home()

    run_tags = {PRIORITY_TAG: str(registry.priority(args.project))}
    if args.top_up_cache:
        run_tags[TOP_UP_TAG] = "true"
    instance = DagsterInstance.get()
    if args.in_process:
        from voxl_assets.db import shared_database
        from voxl_assets.orchestration import RunFailed, materialize_export, materialize_studies
        from voxl_assets.terminal import phase_progress, progress_over_studies

        try:
            with progress_over_studies(shared_database(), keys, "studies"):
                materialize_studies(instance, keys, "cli-backfill", tags=run_tags)
            for extract_key in extract_keys:
                with phase_progress(f"export {extract_key}", _log):
                    materialize_export(instance, extract_key, "cli-backfill")
        except RunFailed as exc:
            _error(str(exc))
            return EXIT_BAD_INPUT if exc.bad_input else EXIT_FAILED
        print(
            f"processed {len(keys)} studies and exported {len(extract_keys)} extract(s) in-process"
        )
        return EXIT_OK
    backfill_id = uuid.uuid4().hex[:8]
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id,
        asset_graph=defs.resolve_asset_graph(),
        partition_names=keys,
        asset_selection=[
            AssetKey("raw_study"),
            AssetKey("anonymised_study"),
            AssetKey("destination_upload"),
        ],
        backfill_timestamp=time.time(),
        tags={"voxl/source": "cli-backfill", "voxl/project": args.project, **run_tags},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=f"voxl backfill {args.project}" + (" (failed only)" if args.failed_only else ""),
        description=f"{len(keys)} studies of {len(extract_keys)} extract(s)",
        run_config=None,
    )
    instance.add_backfill(backfill)
    print(f"backfill {backfill_id}: {len(keys)} studies of {len(extract_keys)} extract(s) queued")
    print("the Dagster daemon runs it (see Overview > Backfills in the UI); the export sensor")
    print("exports each extract once its studies have ended, or run `voxl export PROJECT EXTRACT`")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    _, extract_keys = _study_keys(args.project, args.extract, False)
    if len(extract_keys) != 1:
        _error(
            f"{len(extract_keys)} extracts of '{args.project}' match {args.extract!r}: give the extract datetime as in `voxl status` (e.g. 2026-11-01T12-00-00)"
        )
        return EXIT_BAD_INPUT
    from dagster import DagsterInstance

    from voxl_assets.dagster_home import ensure_dagster_home
    from voxl_assets.orchestration import RunFailed, materialize_export
    from voxl_assets.terminal import phase_progress

    ensure_dagster_home()
    try:
        with phase_progress(f"export {extract_keys[0]}", _log):
            result = materialize_export(DagsterInstance.get(), extract_keys[0], "cli-export")
    except RunFailed as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT if exc.bad_input else EXIT_FAILED
    print(f"exported {extract_keys[0]} (run {result.run_id})")
    return EXIT_OK


def cmd_deid_preview(args: argparse.Namespace) -> int:
    folder = Path(args.path)
    if not folder.is_dir():
        _error(f"{folder}: not a folder (give a folder of DICOM files, or of study folders)")
        return EXIT_BAD_INPUT
    registered = _registered_project(args.project)
    if registered is None:
        return EXIT_BAD_INPUT
    registry, project = registered
    from voxl_assets.export.deid_preview import preview_report, sample_studies

    if not sample_studies(folder):
        _error(f"{folder}: no files to preview")
        return EXIT_BAD_INPUT
    out_dir = Path(args.out) if args.out else Path.cwd() / f"deid-preview-{project.slug}"
    result = preview_report(project, registry.directory, folder, out_dir)
    tally = result.tally
    print(
        f"{result.studies} studies: {tally.instances_out} of {tally.instances_in} instances "
        f"written, {sum(tally.filtered.values())} filtered, {sum(tally.refused.values())} refused"
    )
    for name, check in sorted(tally.checks.items()):
        print(f"  {name}: {check.studies_passed} of {check.studies_run} studies passed")
    for path in result.files:
        print(f"report: {path}")
    return EXIT_FAILED if tally.studies_failed_checks else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from voxl_assets.demo.run import run_demo

    return run_demo(studies=args.studies, serve_ui=not args.no_ui, port=args.port, log=_log)


def build_parser() -> argparse.ArgumentParser:
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,  # so the flag counts before or after the command
        help="also show Dagster's event log on the terminal (it always goes to the log file)",
    )
    parser = argparse.ArgumentParser(
        prog="voxl",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Dagster's event log of the runs a command starts goes to $VOXL_HOME/logs/.",
        parents=[verbose],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser(
        "check-config", parents=[verbose], help="validate every project definition"
    )
    check.add_argument("--projects-dir", help="default: VOXL_PROJECTS_DIR or project_definitions/")
    check.set_defaults(func=cmd_check_config)

    populate = sub.add_parser(
        "populate",
        parents=[verbose],
        help="register an extract and materialise its cohort messages",
    )
    populate.add_argument("path", help="an OMOP ES extract directory or an escape-hatch CSV file")
    populate.set_defaults(func=cmd_populate)

    status = sub.add_parser("status", parents=[verbose], help="studies per state for each extract")
    status.add_argument("project", nargs="?", help="only this project (slug)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    archives = sub.add_parser("archives", parents=[verbose], help="the hospital's archives")
    archives_sub = archives.add_subparsers(dest="archives_command", required=True)
    rate = archives_sub.add_parser(
        "rate",
        parents=[verbose],
        help="set an archive's query rate for every worker, effective while they run",
    )
    rate.add_argument("name", help="archive name (vna, or a name of VOXL_ARCHIVES_FILE)")
    rate.add_argument("qps", nargs="?", type=float, help="queries per second (e.g. 2 or 0.5)")
    rate.add_argument("--clear", action="store_true", help="go back to the configured rate")
    rate.set_defaults(func=cmd_archives_rate)

    backfill = sub.add_parser(
        "backfill", parents=[verbose], help="(re)process a project's studies through Dagster"
    )
    backfill.add_argument("project", help="project slug")
    backfill.add_argument("--extract", help="only this extract (datetime as in `voxl status`)")
    backfill.add_argument("--failed-only", action="store_true", help="only studies that failed")
    backfill.add_argument(
        "--top-up-cache",
        action="store_true",
        help="ask the archive for instances added since a study was cached, and fetch only those",
    )
    backfill.add_argument(
        "--in-process",
        action="store_true",
        help="run now in this process instead of queueing a backfill for the daemon",
    )
    backfill.set_defaults(func=cmd_backfill)

    export = sub.add_parser(
        "export", parents=[verbose], help="(re)export an extract: mapping table and EHR bundle"
    )
    export.add_argument("project", help="project slug")
    export.add_argument(
        "extract", help="extract datetime as in `voxl status` (e.g. 2026-11-01T12-00-00)"
    )
    export.set_defaults(func=cmd_export)

    preview = sub.add_parser(
        "deid-preview",
        parents=[verbose],
        help="the de-identification report of a sample folder, before any export",
    )
    preview.add_argument("project", help="project slug")
    preview.add_argument("path", help="a folder of DICOM files (one study) or of study folders")
    preview.add_argument("--out", help="where the report goes (default: ./deid-preview-<project>/)")
    preview.set_defaults(func=cmd_deid_preview)

    demo = sub.add_parser(
        "demo", parents=[verbose], help="run the whole job on generated data, then serve the UI"
    )
    demo.add_argument("--studies", type=int, default=24, help="studies in the generated extract")
    demo.add_argument(
        "--no-ui", action="store_true", help="stop after the job instead of serving the UI"
    )
    demo.add_argument("--port", type=int, default=3000, help="port of the Dagster UI")
    demo.set_defaults(func=cmd_demo)

    schema = sub.add_parser(
        "schema", parents=[verbose], help="print the JSON schema of a project definition"
    )
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    global _log
    from voxl_assets.at_rest import restrict_umask

    restrict_umask()  # before anything is written: see voxl_assets/at_rest.py
    args = build_parser().parse_args(argv)
    _log = CommandLog(args.command, verbose=getattr(args, "verbose", False)).install()
    try:
        code = int(args.func(args))
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # one line on the terminal, the stack in the log file
        _error(_log.log_unexpected(exc))
        code = EXIT_FAILED
    finally:
        _log.uninstall()
    if code == EXIT_OK and _log.written():
        print(f"log: {_log.path}", file=sys.stderr)
    _log = None
    return code


if __name__ == "__main__":
    sys.exit(main())
