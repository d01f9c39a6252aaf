"""Deterministic usage events (CloudEvents 1.0) for a generated company.

About 40% of the company's Stripe subscriptions carry a metered item. Each reports
``per_day`` events a day while it is live in the history window, alternating between its
meters (``api_calls`` always; ``storage_gb_hours`` for about half of them), with integer
values. Every choice comes from a ``random.Random`` seeded by the company's seed and the
subscription id, so the same company always yields the same events, in the same order.

Planted problems, recorded like ``Company.planted`` (system "metering", object "usage_event",
id ``"<source>/<id>"``, field):

- ``duplicate_usage_event``: an event sent twice with the same (source, id); stored once.
- ``malformed_usage_event``: a value that passes CloudEvents validation but breaks finsync's
  usage contract (the string ``"12.5"``, or ``-3``).
- ``unknown_usage_subject``: an event whose subject matches no Stripe subscription.
"""

import datetime as dt
import hashlib
import random
from typing import Any

from finsync_pipeline.sandbox.generator import Company, add_months

SOURCE = "/meter/api-gateway"
METER_NAMES = ("api_calls", "storage_gb_hours")
METERED_SHARE = 0.4
DEFAULT_PER_DAY = 1

Record = dict[str, Any]


def event_type(meter: str) -> str:
    """The CloudEvents ``type`` of a meter's events."""
    return f"com.finsync.usage.{meter}.v1"


def event_id(*parts: object) -> str:
    """A deterministic event id from the parts that make the usage record unique."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()
    return "evt_" + digest[:24]


def record_id(event: Record) -> str:
    """How finsync names a usage event in quarantine and exceptions: ``source/id``."""
    return f"{event['source']}/{event['id']}"


def _plant(event: Record, fld: str) -> Record:
    return {"system": "metering", "object": "usage_event", "id": record_id(event), "field": fld}


def _event(meter: str, subject: str, when: dt.datetime, value: Any, eid: str) -> Record:
    return {
        "specversion": "1.0",
        "id": eid,
        "source": SOURCE,
        "type": event_type(meter),
        "subject": subject,
        "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "datacontenttype": "application/json",
        "data": {"value": value, "meter": meter},
    }


def metered_subscriptions(company: Company) -> list[Record]:
    """The subscriptions that carry a metered item (a deterministic ~40%)."""
    pick = random.Random(f"{company.spec.seed}:usage:metered")  # noqa: S311
    subs = sorted(company.stripe["subscription"], key=lambda s: s["id"])
    return [s for s in subs if pick.random() < METERED_SHARE]


def generate_usage(
    company: Company, *, per_day: int = DEFAULT_PER_DAY
) -> tuple[list[Record], dict[str, list[Record]]]:
    """Usage events of the company's metered subscriptions over its history window.

    Args:
        company: A generated company (``generator.generate``).
        per_day: Events per metered subscription per live day (the scale knob).

    Returns:
        The events in sending order (planted duplicates included) and the planted problems.
    """
    if per_day < 1:
        raise ValueError("per_day must be >= 1")
    spec = company.spec
    first = add_months(spec.end, -spec.months) + dt.timedelta(days=1)
    events: list[Record] = []
    for sub in metered_subscriptions(company):
        rng = random.Random(f"{spec.seed}:usage:{sub['id']}")  # noqa: S311
        meters = list(METER_NAMES) if rng.random() < 0.5 else [METER_NAMES[0]]
        start = max(first, dt.datetime.fromtimestamp(sub["created"], dt.UTC).date())
        stop = spec.end
        if sub.get("canceled_at"):
            stop = min(stop, dt.datetime.fromtimestamp(sub["canceled_at"], dt.UTC).date())
        day = start
        while day <= stop:
            midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
            for n in range(per_day):
                meter = meters[(day.toordinal() + n) % len(meters)]
                value = rng.randint(50, 5000) if meter == "api_calls" else rng.randint(1, 720)
                when = midnight + dt.timedelta(seconds=rng.randint(0, 86399))
                eid = event_id(spec.seed, sub["id"], meter, day.isoformat(), n)
                events.append(_event(meter, sub["id"], when, value, eid))
            day += dt.timedelta(days=1)
    planted: dict[str, list[Record]] = {
        "duplicate_usage_event": [],
        "malformed_usage_event": [],
        "unknown_usage_subject": [],
    }
    if not events:
        return events, planted
    plant_rng = random.Random(f"{spec.seed}:usage:planted")  # noqa: S311
    plant_n = max(1, spec.accounts // 100)
    chosen = plant_rng.sample(range(len(events)), min(len(events), 2 * plant_n))
    for k, index in enumerate(chosen[:plant_n]):
        event = events[index]
        event["data"]["value"] = "12.5" if k % 2 == 0 else -3
        planted["malformed_usage_event"].append(_plant(event, "data.value"))
    for index in chosen[plant_n:]:
        events.append(dict(events[index]))
        planted["duplicate_usage_event"].append(_plant(events[index], "id"))
    for k in range(plant_n):
        template = events[plant_rng.randrange(len(events))]
        ghost = "sub_" + hashlib.sha256(f"{spec.seed}:ghost:{k}".encode()).hexdigest()[:24]
        eid = event_id(spec.seed, ghost, "api_calls", k)
        when = dt.datetime.fromisoformat(template["time"].replace("Z", "+00:00"))
        event = _event("api_calls", ghost, when, 100 + k, eid)
        events.append(event)
        planted["unknown_usage_subject"].append(_plant(event, "subject"))
    return events, planted
