"""Eight kills from outside of a real `finsync run` of one day after another, with NetSuite
faults armed, then one uncut run of the days: NetSuite holds exactly what an uninterrupted
control run leaves (see crash_storm; the long storm is `make crash-storm`)."""

from pathlib import Path

import pytest

from finsync_tests.crash_storm import storm

pytestmark = pytest.mark.e2e


def test_kills_from_outside_under_faults_leave_netsuite_as_an_uncut_run_does(
    tmp_path: Path,
) -> None:
    report = storm(kills=8, seed=11, workdir=tmp_path)
    assert report.mismatches == [], report
    # A round whose run finished before its kill moment (a day with nothing to post finishes
    # fast) is a kill that did not happen; half the rounds wait for posting, so kills land
    # among documents in flight.
    assert report.kills >= 2, report
    assert report.kills_while_in_flight >= 1, report
    assert report.documents > 0, report
