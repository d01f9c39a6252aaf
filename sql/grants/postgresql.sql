-- Roles of a PostgreSQL warehouse. The owner of the database sets its schema up first
-- (`finsync warehouse migrate`); then this file is applied once, by a user who may create
-- roles (or after a DBA created the three roles):
--   psql "$DATABASE" -v ON_ERROR_STOP=1 -f sql/grants/postgresql.sql
-- Every later `finsync warehouse migrate` applies it again (the roles then exist), so a view or
-- table a migration recreated, or a table a release added, has its grants at once. It starts
-- from no privilege each time, so it says all any role may do.
-- Roles are NOLOGIN groups: grant them to real users (GRANT finsync_analyst TO alice;).
--   finsync_pipeline     runs `finsync run`, `finsync deploy` and `finsync exceptions retry`
--   finsync_finance_ops  runs `finsync exceptions list | show | resolve` and `ledger verify`
--   finsync_analyst      reads the views (v_*)
-- The owner of the tables runs `finsync warehouse migrate`, and nothing else needs to.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'finsync_analyst') THEN
        CREATE ROLE finsync_analyst NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'finsync_finance_ops') THEN
        CREATE ROLE finsync_finance_ops NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'finsync_pipeline') THEN
        CREATE ROLE finsync_pipeline NOLOGIN;
    END IF;
END
$$;

-- From nothing: no role keeps a privilege this file does not give. No one but the owner
-- creates objects (PostgreSQL before 15 let PUBLIC create in public).
REVOKE ALL ON ALL TABLES IN SCHEMA public
    FROM finsync_analyst, finsync_finance_ops, finsync_pipeline;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM finsync_analyst, finsync_finance_ops, finsync_pipeline;
GRANT USAGE ON SCHEMA public TO finsync_analyst, finsync_finance_ops, finsync_pipeline;

-- pipeline: reads everything and writes the data tables; never the owner.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO finsync_pipeline;
-- finance_ops: reads everything (the queue, the ledger, quarantine, the actions).
GRANT SELECT ON ALL TABLES IN SCHEMA public TO finsync_finance_ops;

-- Views are read only, by every role: a simple view is updatable in PostgreSQL, and writes
-- through it run with the owner's rights, so a write grant on v_posting_lease_settlements
-- would be one on the journal.
DO $$
DECLARE
    view_name TEXT;
BEGIN
    FOR view_name IN SELECT viewname FROM pg_views WHERE schemaname = 'public' LOOP
        EXECUTE 'REVOKE ALL ON ' || quote_ident(view_name)
            || ' FROM finsync_analyst, finsync_finance_ops, finsync_pipeline';
        EXECUTE 'GRANT SELECT ON ' || quote_ident(view_name)
            || ' TO finsync_analyst, finsync_finance_ops, finsync_pipeline';
    END LOOP;
END
$$;

-- The audit trail only grows. The journal is HMAC-sealed and appended to by the pipeline;
-- exception_actions records every manual action on the queue. Neither may be changed or cut.
REVOKE UPDATE, DELETE ON posting_ledger_journal, exception_actions FROM finsync_pipeline;
-- The journal's checkpoints and the schema's version are the owner's: the pipeline records a
-- checkpoint only through finsync_checkpoint_ledger, which copies a row the journal holds.
REVOKE INSERT, UPDATE, DELETE ON posting_ledger_checkpoints, schema_version, schema_migrations
    FROM finsync_pipeline;
GRANT EXECUTE ON FUNCTION finsync_checkpoint_ledger(BIGINT, TEXT) TO finsync_pipeline;

-- finance_ops: closes an exception only through finsync_resolve_exception (`finsync exceptions
-- resolve`), which records the action with it; it may add to exception_actions (a retry of a
-- problem only a fix clears is recorded so), never change or delete a row there.
GRANT INSERT ON exception_actions TO finsync_finance_ops;
GRANT EXECUTE
    ON FUNCTION finsync_resolve_exception(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT)
    TO finsync_finance_ops;
