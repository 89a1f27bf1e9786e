"""listing indexes and overview tallies

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 01:40:00.000000

The overview reads counts kept by triggers (every writer keeps them right, older releases during
a rolling upgrade and bulk loads included) instead of counting a million rows per refresh:
accounts per 2FA state, accounts per furthest enrollment step ever reached (a new column,
``accounts.enrollment_reached``, set by the same triggers) and audit records per UTC day and
event. The backfill reads each account's audit history once. The email sort and search read
``lower(email)``, so the state filter gets an index on (state, lower(email)); on PostgreSQL
both carry the email and the id, so a search's count and a page's offset stay in the index.

SQLite's batch migrations copy a table and drop its triggers: a later batch on ``accounts`` or
``audit_log`` must create them again (as 0007's append-only triggers must be).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Enrollment steps in order: 1 enabled (a code sent), 2 code validated, 3 activated.
_LEVEL = (
    "CASE {} WHEN 'pending_code' THEN 1 WHEN 'pending_activation' THEN 2 "
    "WHEN 'active' THEN 3 WHEN 'locked' THEN 3 ELSE 0 END"
)
_STATE_UPSERT = (
    "INSERT INTO state_tallies (state, accounts) VALUES ({state}, {delta}) "
    "ON CONFLICT (state) DO UPDATE SET accounts = state_tallies.accounts + {delta}"
)
_REACHED = (
    "UPDATE funnel_tallies SET accounts = accounts + 1 WHERE level > {old} AND level <= {new}"
)
_CARRIED = ["email", "id"]
_POSTGRESQL_DAY = "(NEW.at AT TIME ZONE 'UTC')::date"


def upgrade() -> None:
    """Upgrade schema."""
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.add_column(
        "accounts",
        sa.Column("enrollment_reached", sa.Integer(), server_default="0", nullable=False),
    )
    op.drop_index("ix_accounts_state_email", table_name="accounts")
    if postgresql:  # the email and id carried: a search's count and a page's offset index-only
        op.drop_index("uq_accounts_email_lower", table_name="accounts")
        op.create_index(
            "uq_accounts_email_lower",
            "accounts",
            [sa.text("lower(email)")],
            unique=True,
            postgresql_include=_CARRIED,
        )
    op.create_index(
        "ix_accounts_state_email_lower",
        "accounts",
        ["two_factor_state", sa.text("lower(email)")],
        postgresql_include=_CARRIED,
    )
    op.create_table(
        "state_tallies",
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("accounts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("state"),
    )
    op.create_table(
        "funnel_tallies",
        sa.Column("level", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("accounts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("level"),
    )
    op.create_table(
        "audit_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "event"),
    )
    _backfill(postgresql)
    if postgresql:
        _postgresql_triggers()
    else:
        _sqlite_triggers()


def _backfill(postgresql: bool) -> None:
    after = "(details::json ->> 'after')" if postgresql else "json_extract(details, '$.after')"
    day = "(at AT TIME ZONE 'UTC')::date" if postgresql else "date(at)"
    op.execute(
        "UPDATE accounts SET enrollment_reached = "
        f"{_LEVEL.format('two_factor_state')} WHERE {_LEVEL.format('two_factor_state')} > 0"
    )
    op.execute(  # an enrollment given up or disabled since still counts as reached
        "UPDATE accounts SET enrollment_reached = history.reached FROM ("
        f"SELECT account_id, max({_LEVEL.format(after)}) AS reached FROM audit_log "
        "WHERE event = 'two_factor_state_changed' GROUP BY account_id) AS history "
        "WHERE accounts.id = history.account_id "
        "AND history.reached > accounts.enrollment_reached"
    )
    op.execute(
        "INSERT INTO state_tallies (state, accounts) "
        "SELECT two_factor_state, count(*) FROM accounts GROUP BY two_factor_state"
    )
    op.execute(
        "INSERT INTO funnel_tallies (level, accounts) SELECT level, "
        "(SELECT count(*) FROM accounts WHERE enrollment_reached >= level) FROM "
        "(SELECT 1 AS level UNION ALL SELECT 2 UNION ALL SELECT 3) AS levels"
    )
    op.execute(
        f"INSERT INTO audit_days (day, event, records) SELECT {day}, event, count(*) "
        f"FROM audit_log GROUP BY {day}, event"
    )


def _sqlite_triggers() -> None:
    level = _LEVEL.format("NEW.two_factor_state")
    op.execute(
        "CREATE TRIGGER accounts_tally_insert AFTER INSERT ON accounts BEGIN "
        f"{_STATE_UPSERT.format(state='NEW.two_factor_state', delta=1)}; "
        f"UPDATE accounts SET enrollment_reached = {level} "
        f"WHERE rowid = NEW.rowid AND enrollment_reached < {level}; END"
    )
    op.execute(
        "CREATE TRIGGER accounts_tally_state AFTER UPDATE OF two_factor_state ON accounts "
        "WHEN OLD.two_factor_state IS NOT NEW.two_factor_state BEGIN "
        f"{_STATE_UPSERT.format(state='OLD.two_factor_state', delta=-1)}; "
        f"{_STATE_UPSERT.format(state='NEW.two_factor_state', delta=1)}; "
        f"UPDATE accounts SET enrollment_reached = {level} "
        f"WHERE rowid = NEW.rowid AND enrollment_reached < {level}; END"
    )
    op.execute(
        "CREATE TRIGGER accounts_tally_reached AFTER UPDATE OF enrollment_reached ON accounts "
        "WHEN NEW.enrollment_reached > OLD.enrollment_reached BEGIN "
        f"{_REACHED.format(old='OLD.enrollment_reached', new='NEW.enrollment_reached')}; END"
    )
    op.execute(
        "CREATE TRIGGER accounts_tally_delete AFTER DELETE ON accounts BEGIN "
        f"{_STATE_UPSERT.format(state='OLD.two_factor_state', delta=-1)}; END"
    )
    op.execute(
        "CREATE TRIGGER audit_log_tally_day AFTER INSERT ON audit_log BEGIN "
        "INSERT INTO audit_days (day, event, records) VALUES (date(NEW.at), NEW.event, 1) "
        "ON CONFLICT (day, event) DO UPDATE SET records = audit_days.records + 1; END"
    )


#: ``twofa.audit``'s chain lock. Every state change also appends an audit record under it, so
#: the tally rows (shared by every account in a state) are locked after it, never before: a
#: change that updated a tally and then waited for the chain, while the chain's holder waited
#: for that tally, deadlocked under concurrent journeys.
CHAIN_LOCK = 0x2FA0A0D1


def _postgresql_triggers() -> None:
    level = _LEVEL.format("NEW.two_factor_state")
    old_reached = "CASE TG_OP WHEN 'INSERT' THEN 0 ELSE OLD.enrollment_reached END"
    op.execute(
        "CREATE FUNCTION accounts_reached() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"NEW.enrollment_reached := greatest(NEW.enrollment_reached, {level}); "
        "RETURN NEW; END $$"
    )
    op.execute(
        "CREATE FUNCTION accounts_tally() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"PERFORM pg_advisory_xact_lock({CHAIN_LOCK}); "
        "IF TG_OP = 'DELETE' THEN "
        f"{_STATE_UPSERT.format(state='OLD.two_factor_state', delta=-1)}; RETURN NULL; END IF; "
        "IF TG_OP = 'INSERT' OR OLD.two_factor_state IS DISTINCT FROM NEW.two_factor_state THEN "
        "IF TG_OP = 'UPDATE' THEN "
        f"{_STATE_UPSERT.format(state='OLD.two_factor_state', delta=-1)}; END IF; "
        f"{_STATE_UPSERT.format(state='NEW.two_factor_state', delta=1)}; END IF; "
        f"{_REACHED.format(old=old_reached, new='NEW.enrollment_reached')}; "
        "RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER accounts_reached BEFORE INSERT OR UPDATE OF two_factor_state "
        "ON accounts FOR EACH ROW EXECUTE FUNCTION accounts_reached()"
    )
    op.execute(
        "CREATE TRIGGER accounts_tally AFTER INSERT OR DELETE OR UPDATE OF two_factor_state, "
        "enrollment_reached ON accounts FOR EACH ROW EXECUTE FUNCTION accounts_tally()"
    )
    op.execute(
        "CREATE FUNCTION audit_log_tally_day() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO audit_days (day, event, records) "
        f"VALUES ({_POSTGRESQL_DAY}, NEW.event, 1) "
        "ON CONFLICT (day, event) DO UPDATE SET records = audit_days.records + 1; "
        "RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER audit_log_tally_day AFTER INSERT ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_tally_day()"
    )


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_tally_day ON audit_log")
        op.execute("DROP TRIGGER accounts_tally ON accounts")
        op.execute("DROP TRIGGER accounts_reached ON accounts")
        for function in ("audit_log_tally_day", "accounts_tally", "accounts_reached"):
            op.execute(f"DROP FUNCTION {function}()")
    else:
        for trigger in (
            "audit_log_tally_day",
            "accounts_tally_delete",
            "accounts_tally_reached",
            "accounts_tally_state",
            "accounts_tally_insert",
        ):
            op.execute(f"DROP TRIGGER {trigger}")
    op.drop_table("audit_days")
    op.drop_table("funnel_tallies")
    op.drop_table("state_tallies")
    op.drop_index("ix_accounts_state_email_lower", table_name="accounts")
    op.create_index("ix_accounts_state_email", "accounts", ["two_factor_state", "email"])
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("uq_accounts_email_lower", table_name="accounts")
        op.create_index(
            "uq_accounts_email_lower", "accounts", [sa.text("lower(email)")], unique=True
        )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("enrollment_reached")
