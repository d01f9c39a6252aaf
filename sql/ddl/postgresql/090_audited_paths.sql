-- The audited paths of a PostgreSQL warehouse with finsync's roles (sql/grants/postgresql.sql).
-- Each runs with its owner's rights (SECURITY DEFINER) for a role that may not touch the table
-- itself, and does one thing only; EXECUTE is granted by the grants file, to no one else.

-- finance_ops closes an exception only through this: the status change and its
-- exception_actions row are one statement each of one call, so no exception closes unrecorded.
-- The database user is recorded beside the actor the caller names.
CREATE OR REPLACE FUNCTION finsync_resolve_exception(
    p_kind TEXT, p_source_system TEXT, p_source_id TEXT, p_actor TEXT, p_reason TEXT,
    p_action_id TEXT, p_at TEXT
) RETURNS VOID LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    UPDATE finance_exceptions
    SET status = 'resolved', resolved_at = p_at, resolution = 'manual by ' || p_actor || ': ' || p_reason
    WHERE kind = p_kind AND source_system = p_source_system AND source_id = p_source_id;
    INSERT INTO exception_actions (action_id, at, actor, action, kind, source_system, source_id,
                                   reason, outcome)
    VALUES (p_action_id, p_at, p_actor, 'resolve', p_kind, p_source_system, p_source_id,
            p_reason, 'resolved by database user ' || session_user);
$$;
REVOKE ALL ON FUNCTION finsync_resolve_exception(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT)
    FROM PUBLIC;

-- The pipeline checkpoints the journal's head through this, never by writing the table: it
-- copies the seal of a row the journal holds (the caller names only its seq) with the
-- database's own clock, so a checkpoint can only ever tell the truth about the journal.
CREATE OR REPLACE FUNCTION finsync_checkpoint_ledger(p_seq BIGINT, p_run_id TEXT)
RETURNS VOID LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    INSERT INTO posting_ledger_checkpoints (seq, hash, at, run_id)
    SELECT j.seq, j.hash,
           to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), p_run_id
    FROM posting_ledger_journal j
    WHERE j.seq = p_seq
      AND NOT EXISTS (SELECT 1 FROM posting_ledger_checkpoints c WHERE c.seq = j.seq);
$$;
REVOKE ALL ON FUNCTION finsync_checkpoint_ledger(BIGINT, TEXT) FROM PUBLIC
