"""Every setting checked when a command starts, before any work.

A command that would run with a wrong setting stops at once with one line naming the variable
(or the mapping file and its line) and what is allowed: a typo in ``FINSYNC_MODE`` must not
run in live mode, and a malformed mapping must not be found out by the ERP refusing documents.
Credentials are checked separately (``runner.check_environment``): reading the exceptions queue
needs none.
"""

import os

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.master_data import load_master_data
from finsync_pipeline.po_source import po_source
from finsync_pipeline.posting_flows import batch_windows
from finsync_pipeline.resources.http import MODE_ENV, HttpOptions
from finsync_pipeline.resources.settings import (
    future_skew_from_env,
    lease_from_env,
    max_bad_share_from_env,
    min_bad_records_from_env,
    netsuite_concurrency_from_env,
)
from finsync_pipeline.sources import sources_off

MODES = ("sandbox", "live")


def mode_from_env() -> str:
    """``FINSYNC_MODE``: ``sandbox`` (the default) or ``live``.

    Raises:
        ConfigurationError: Any other value; anything but ``sandbox`` once counted as live.
    """
    mode = os.environ.get(MODE_ENV, "").strip() or "sandbox"
    if mode not in MODES:
        raise ConfigurationError(
            f"{MODE_ENV} is {mode!r}: set it to sandbox or live (default sandbox)"
        )
    return mode


def check_settings() -> None:
    """Raise ConfigurationError for the first malformed setting or mapping file."""
    mode_from_env()
    max_bad_share_from_env()
    min_bad_records_from_env()
    batch_windows()
    HttpOptions.from_env()
    lease_from_env()
    netsuite_concurrency_from_env()
    future_skew_from_env()
    sources_off()
    po_source()
    load_master_data()
