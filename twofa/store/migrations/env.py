"""Alembic environment: the models' metadata, on the URL the settings give."""

from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import engine_from_config, pool

from twofa.store.migration_locks import lock_every_table
from twofa.store.models import Base

config = context.config
connectable = engine_from_config(
    config.get_section(config.config_ini_section, {}),
    prefix="sqlalchemy.",
    poolclass=pool.NullPool,
)
with connectable.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        pending = set(context.get_context().get_current_heads()) != set(
            ScriptDirectory.from_config(config).get_heads()
        )
        if pending and connection.dialect.name == "postgresql":
            lock_every_table(connection)  # no deadlock with the running release's requests
        context.run_migrations()
