"""The schema check that lets `voxl` skip Alembic when the database is current."""

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from voxl_assets.db import VoxlDatabase
from voxl_assets.db.engine import MIGRATIONS_DIR, head_revisions, make_engine, schema_is_current


def test_head_revisions_agree_with_alembic() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert head_revisions() == frozenset(ScriptDirectory.from_config(config).get_heads())


def test_a_new_or_outdated_database_is_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'voxl.db'}"
    engine = make_engine(url)
    assert not schema_is_current(engine)  # no tables at all
    VoxlDatabase(url).dispose()
    assert schema_is_current(engine) and "studies" in inspect(engine).get_table_names()
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    assert not schema_is_current(engine)
    engine.dispose()
