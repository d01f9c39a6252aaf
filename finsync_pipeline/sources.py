"""Sources a company may not have, and the setting that switches them off.

Every company has a CRM, billing and an ERP; not every one meters usage or quotes through
Salesforce CPQ. A company without one names it in ``FINSYNC_SOURCES_OFF``::

    FINSYNC_SOURCES_OFF=metering        # no usage-metering service (METERING_* not needed)
    FINSYNC_SOURCES_OFF=metering,cpq    # nor the SBQQ objects of Salesforce CPQ

A source that is off is not an outage: its extract assets land nothing and send no request,
its contract checks see no records, and what reads it downstream (``usage_daily``) finds
nothing to aggregate and raises no exception. Left unset, every source is on and each one's
credentials are required.
"""

import os

from finsync_pipeline.errors import ConfigurationError

SOURCES_OFF_ENV = "FINSYNC_SOURCES_OFF"
# Each optional source, and what it is in the words of the person setting it.
OPTIONAL_SOURCES = {
    "metering": "usage metering (METERING_API_KEY, METERING_BASE_URL)",
    "cpq": "Salesforce CPQ (the SBQQ__Quote__c, SBQQ__QuoteLine__c and SBQQ__Subscription__c "
    "objects)",
}

# How a message that asks for a source's settings says it can be switched off instead.
SWITCH_OFF_HINT = {
    "metering": f"or {SOURCES_OFF_ENV}=metering if the company meters no usage",
    "cpq": f"or {SOURCES_OFF_ENV}=cpq if the Salesforce org has no CPQ",
}


def sources_off(raw: str | None = None) -> frozenset[str]:
    """The optional sources switched off (from the environment when ``raw`` is None).

    Raises:
        ConfigurationError: The setting names something that is not an optional source.
    """
    text = os.environ.get(SOURCES_OFF_ENV, "") if raw is None else raw
    named = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = sorted(named - set(OPTIONAL_SOURCES))
    if unknown:
        raise ConfigurationError(
            f"{SOURCES_OFF_ENV}: unknown source {', '.join(map(repr, unknown))}; set it to a "
            f"comma-separated list of {', '.join(OPTIONAL_SOURCES)} (or leave it empty)"
        )
    return frozenset(named)
