"""The Celery app VOXL's workers run: ``celery -A voxl_assets.celery_worker worker -Q QUEUES``.

dagster-celery's tasks, with the broker from ``VOXL_CELERY_BROKER_URL`` and the settings the runs
use (``voxl_assets/distributed.py``). Each worker host sets its own ``VOXL_HOME`` (raw cache,
anonymised store) and, for C-MOVE, its own Storage SCP address and AE title; the database and
Dagster's storage are the deployment's (PostgreSQL).
"""

from dagster_celery.executor import CeleryExecutor
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from voxl_assets.at_rest import restrict_umask
from voxl_assets.distributed import CELERY_SETTINGS, broker_url

restrict_umask()  # what the steps write (raw cache, anonymised store) is private

app = make_app(
    CeleryExecutor.for_cli(
        broker=broker_url(), backend="rpc://", config_source=dict(CELERY_SETTINGS)
    ).app_args()
)
execute_plan = create_task(app)
