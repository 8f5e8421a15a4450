-- The least-privilege role for "grouphook run". Not a migration: an
-- administrator runs it, connected to the application database as a
-- superuser (or as the owner of schema grouphook), after "grouphook
-- migrate", and again after every upgrade's migrate. It is idempotent.
--
--   grouphook migrate                                  # as the table's owner or a superuser
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -f sql/roles.sql
--   psql "$ADMIN_URL" -c '\password grouphook'
--   DATABASE_URL='postgres://grouphook:…@db/app' grouphook run
--
-- What the daemon needs, and why nothing more:
--   LOGIN REPLICATION  the replication connection (pgoutput), and creating
--                      the permanent slot on first start (REPLICATION is
--                      enough for that; no superuser, no CREATE on the
--                      database).
--   CONNECT            the database (PUBLIC usually has it; granted here in
--                      case it was revoked).
--   USAGE on schema grouphook, and on its tables:
--     endpoints            SELECT (the registry), UPDATE (the queue marks
--                          failing and disabled endpoints), INSERT and DELETE
--                          (the admin API adds and removes endpoints);
--     deliveries,          SELECT, INSERT, UPDATE, DELETE: the durable
--     delivery_attempts    queue and its attempt history.
-- Not granted, because the daemon does not need them:
--   SELECT on the watched table: changes arrive through the replication
--     stream, which does not check table privileges; the daemon never
--     queries the table.
--   CREATE on the database or schema, table ownership, publication
--     ownership: only "grouphook migrate" creates the schema, the tables and
--     the publication and sets REPLICA IDENTITY, so run migrate as the
--     table's owner (or a superuser), not as this role.
--   grouphook.schema_migrations: only migrate reads it.
-- Note that REPLICATION lets this role stream every table of every
-- publication in the cluster's databases it can connect to: keep its
-- password as secret as a superuser's.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'grouphook') THEN
        CREATE ROLE grouphook LOGIN REPLICATION;
    ELSE
        ALTER ROLE grouphook LOGIN REPLICATION;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO grouphook', current_database());
END
$$;

GRANT USAGE ON SCHEMA grouphook TO grouphook;
GRANT SELECT, INSERT, UPDATE, DELETE ON grouphook.endpoints TO grouphook;
GRANT SELECT, INSERT, UPDATE, DELETE ON grouphook.deliveries, grouphook.delivery_attempts TO grouphook;
