"""The posting ledger's seal, checked after every posting run (a blocking asset check)."""

import dagster as dg

from finsync_pipeline import ledger
from finsync_pipeline.partitions import daily_partitions
from finsync_pipeline.resources.warehouse import WarehouseResource


@dg.asset_check(
    asset="erp_postings",
    name="ledger_sealed",
    blocking=True,
    partitions_def=daily_partitions,
    description="The posting ledger's journal verifies (seals, links, checkpoints) and every "
    "ledger row agrees with its last transition; the head is then checkpointed.",
)
def ledger_sealed(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """Audit the ledger; record its head in the warehouse and in this check's metadata."""
    with warehouse.get_engine().begin() as conn:
        found = ledger.audit(conn)
        head = ledger.checkpoint(conn, run_id=context.run.run_id) if found.intact else None
    metadata: dict[str, dg.MetadataValue] = {
        "transitions": dg.MetadataValue.int(found.transitions),
        "checkpoints compared": dg.MetadataValue.int(found.checkpoints),
        "sealed with a key": dg.MetadataValue.bool(found.keyed),
        "head seq": dg.MetadataValue.int(head[0] if head else found.head_seq),
        "head seal": dg.MetadataValue.text(head[1] if head else found.head_hash),
    }
    if found.problems:
        metadata["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in found.problems[:20]))
    return dg.AssetCheckResult(
        passed=found.intact,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=None if found.intact else found.problems[0],
    )
