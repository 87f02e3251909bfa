"""Archive time windows and the archives file: parsing, opening hours across days and daylight
saving, and errors that name the file, archive and field."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from voxl_assets.vna.archives import ArchiveConfigError, load_archive_configs
from voxl_assets.vna.client import VnaSettings
from voxl_assets.vna.windows import WindowConfigError, parse_window

OUT_OF_HOURS = {
    "timezone": "Europe/London",
    "open": [
        {"days": "mon-fri", "hours": ["00:00-08:00", "20:00-24:00"]},
        {"days": "sat,sun", "hours": "all day"},
    ],
}


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


def test_out_of_hours_window_opens_and_closes_on_local_time() -> None:
    window = parse_window(OUT_OF_HOURS, "archives.yaml: archive pacs")
    # Wednesday 25 November 2026 (GMT = UTC in winter)
    assert window.is_open(_utc(2026, 11, 25, 7, 59))
    assert not window.is_open(_utc(2026, 11, 25, 8, 0))
    assert not window.is_open(_utc(2026, 11, 25, 19, 59))
    assert window.is_open(_utc(2026, 11, 25, 20, 0))
    assert window.next_opening(_utc(2026, 11, 25, 12, 0)) == _utc(2026, 11, 25, 20, 0)
    assert window.next_opening(_utc(2026, 11, 25, 21, 0)) == _utc(2026, 11, 25, 21, 0)
    # Saturday is open all day
    assert window.is_open(_utc(2026, 11, 28, 13, 0))
    assert window.describe() == (
        "Mon-Fri 00:00-08:00, 20:00-24:00; Sat-Sun all day (Europe/London)"
    )


def test_window_follows_daylight_saving() -> None:
    window = parse_window(
        {"timezone": "Europe/London", "open": [{"days": "mon-fri", "hours": "20:00-24:00"}]},
        "w",
    )
    # Wednesday 1 July 2026: BST (UTC+1), so 20:00 local is 19:00 UTC
    assert window.next_opening(_utc(2026, 7, 1, 12, 0)) == _utc(2026, 7, 1, 19, 0)
    assert window.is_open(_utc(2026, 7, 1, 19, 30))
    # Friday 23:00 local is open; the next opening after it is Monday evening
    assert window.next_opening(_utc(2026, 7, 4, 12, 0)) == _utc(2026, 7, 6, 19, 0)


def test_window_needs_an_aware_clock() -> None:
    window = parse_window(OUT_OF_HOURS, "w")
    with pytest.raises(ValueError, match="timezone-aware"):
        window.is_open(datetime(2026, 11, 25, 12, 0))


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"open": [{"days": "mon", "hours": "all day"}]}, "needs a timezone"),
        (
            {"timezone": "Mars/Olympus", "open": [{"days": "mon", "hours": "all day"}]},
            "unknown timezone",
        ),
        ({"timezone": "UTC", "open": []}, "needs 'open'"),
        ({"timezone": "UTC", "open": [{"days": "funday", "hours": "all day"}]}, "days 'funday'"),
        ({"timezone": "UTC", "open": [{"days": "fri-mon", "hours": "all day"}]}, "runs backwards"),
        ({"timezone": "UTC", "open": [{"days": "mon", "hours": "20:00-08:00"}]}, "wrap midnight"),
        ({"timezone": "UTC", "open": [{"days": "mon", "hours": "8-9"}]}, "is not HH:MM"),
        ({"timezone": "UTC", "open": [{"days": "mon", "hours": "08:00-25:00"}]}, "outside"),
        ({"timezone": "UTC", "open": [{"days": "mon"}]}, "exactly 'days' and 'hours'"),
    ],
)
def test_bad_windows_are_named(raw: dict[str, object], message: str) -> None:
    with pytest.raises(WindowConfigError, match=message) as caught:
        parse_window(raw, "archives.yaml: archive pacs")
    assert "archives.yaml: archive pacs" in str(caught.value)


def test_archives_file_orders_by_priority_and_keeps_voxl_side(tmp_path: Path) -> None:
    path = tmp_path / "archives.yaml"
    path.write_text(
        """
archives:
  - name: pacs
    priority: 2
    host: pacs.example.org
    ae_title: PACS
    retrieve: c-move
    queries_per_second: 1
    window:
      timezone: Europe/London
      open:
        - days: sat-sun
          hours: all day
  - name: vna
    priority: 1
    host: vna.example.org
    port: 11112
"""
    )
    local = VnaSettings(
        calling_ae_title="VOXLPROD", move_destination_ae="VOXLPROD", store_scp_port=4010
    )
    configs = load_archive_configs(path, local)
    assert [c.name for c in configs] == ["vna", "pacs"]
    vna, pacs = configs
    assert (vna.settings.host, vna.settings.port, vna.window) == ("vna.example.org", 11112, None)
    assert pacs.settings.retrieve == "c-move" and pacs.settings.queries_per_second == 1
    assert pacs.settings.calling_ae_title == "VOXLPROD" and pacs.settings.store_scp_port == 4010
    assert pacs.window is not None and not pacs.is_open(_utc(2026, 11, 25, 12, 0))
    assert vna.is_open(_utc(2026, 11, 25, 12, 0))


@pytest.mark.parametrize(
    "body,message",
    [
        ("archives: []", "archives"),
        ("archives:\n  - name: vna\n    colour: red", "colour"),
        ("archives:\n  - name: vna\n  - name: vna", "unique"),
        ("archives:\n  - name: web\n    kind: dicomweb", "give dicomweb_url"),
        (
            "archives:\n  - name: pacs\n    window: {timezone: UTC, open: [{days: mon, hours: '9-5'}]}",
            "archive pacs: open\\[0\\]: time '9' is not HH:MM",
        ),
    ],
)
def test_bad_archives_files_are_named(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "archives.yaml"
    path.write_text(body)
    with pytest.raises(ArchiveConfigError, match=message) as caught:
        load_archive_configs(path, VnaSettings())
    assert str(path) in str(caught.value)


def test_shipped_example_archives_file_is_valid() -> None:
    from voxl_assets import settings

    path = settings.REPO_ROOT / "deployments" / "production" / "archives.yaml"
    vna, pacs = load_archive_configs(path, VnaSettings())
    assert (vna.name, vna.window, pacs.name) == ("vna", None, "pacs")
    assert pacs.window is not None and pacs.is_open(_utc(2026, 11, 28, 12, 0))  # a Saturday
    assert not pacs.is_open(_utc(2026, 11, 25, 12, 0))  # a Wednesday noon
