from hdc_common.db import run_migrations_env
from hdc_serving.jobs.store import Base

run_migrations_env(Base.metadata)
