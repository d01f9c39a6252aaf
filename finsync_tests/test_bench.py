"""`finsync bench posting` runs end to end on a few documents and prints its figures."""

import json

from finsync_tests.test_cli import _finsync


def test_bench_posting_prints_its_figures_with_every_outcome_recorded() -> None:
    result = _finsync(
        "bench",
        "posting",
        "--documents",
        "20",
        "--latency",
        "0.01",
        "--limit",
        "2",
        "--concurrency",
        "4",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "docs_per_s" in result.stdout
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["posted"] == 20
    assert figures["ledger_all_posted"] and figures["journal_verified"]
    assert not figures["paused"]
    assert figures["bound_docs_per_s"] == 200.0
    assert figures["cpu_s_per_doc"] > 0
