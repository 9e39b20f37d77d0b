from hdc_common.db import run_migrations_env
from hdc_im.models import Base

run_migrations_env(Base.metadata)
