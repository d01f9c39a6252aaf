-- Roles of a PostgreSQL warehouse. Apply once, as an owner of the database, after the pipeline
-- has created its tables (any finsync command does):
--   psql "$DATABASE" -f sql/grants/postgresql.sql
-- Roles are NOLOGIN groups: grant them to real users (GRANT finsync_analyst TO alice;).

CREATE ROLE finsync_analyst NOLOGIN;
CREATE ROLE finsync_finance_ops NOLOGIN;
CREATE ROLE finsync_pipeline NOLOGIN;

-- analyst: read-only, views and tables.
GRANT USAGE ON SCHEMA public TO finsync_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO finsync_analyst;

-- finance_ops: reads everything, and may work the exceptions queue (status and resolution).
GRANT finsync_analyst TO finsync_finance_ops;
GRANT UPDATE (status, resolution, resolved_at) ON finance_exceptions TO finsync_finance_ops;

-- pipeline: writes every table. The posting ledger journal and its checkpoints are
-- append-only: no UPDATE, no DELETE, so the sealed chain and the heads recorded of it can only
-- grow.
GRANT USAGE, CREATE ON SCHEMA public TO finsync_pipeline;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO finsync_pipeline;
REVOKE UPDATE, DELETE ON posting_ledger_journal FROM finsync_pipeline;
REVOKE UPDATE, DELETE ON posting_ledger_checkpoints FROM finsync_pipeline;
