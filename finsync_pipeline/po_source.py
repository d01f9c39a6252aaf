"""Where a customer's purchase order (PO) number is read from: ``FINSYNC_PO_SOURCE``.

A company keeps the PO its customer issued where its team types it, so the place is
configuration, not code:

- ``stripe_custom_field:<name>`` (the default, ``stripe_custom_field:PO Number``): the Stripe
  invoice's ``custom_fields``, a list of ``{name, value}`` (at most 4, or null) that Stripe
  prints on the invoice PDF; a customer's ``invoice_settings.custom_fields`` are copied onto
  each new invoice, so a PO set on the customer arrives here too. Names match ignoring case.
- ``stripe_metadata:<key>``: a key of the Stripe invoice's ``metadata``.
- ``salesforce_opportunity:<Field>``: a field (a custom ``PO_Number__c``, say) of the Salesforce
  Opportunity the invoice bills.
- ``salesforce_quote:<Field>``: a field of the primary Salesforce CPQ quote
  (``SBQQ__Quote__c`` with ``SBQQ__Primary__c``) of that Opportunity.

For the two Salesforce sources the field is extracted with the Opportunity (or the quote), and
an invoice is linked to the Opportunity it bills the way CPQ-to-Stripe integrations record it:
a Salesforce id in Stripe metadata. Stripe's own Billing connector for Salesforce CPQ writes
``salesforce_<object>_id`` keys on the subscription it creates (``salesforce_order_id``); a
subscription carries the Opportunity as ``salesforce_opportunity_id`` (the default of
``FINSYNC_PO_OPPORTUNITY_KEY``). The key is read from the invoice's own ``metadata`` first,
then from ``parent.subscription_details.metadata``, Stripe's snapshot of the subscription's
metadata when the invoice was finalized. When neither carries it, the invoice is matched as
renewal reconciliation matches a renewal: the account's closed-won Opportunity whose term
(its contract's start date, else its close date) starts on the invoice date or within the
grace days before it. An explicit link always wins over that match.

The PO lands in NetSuite's ``otherRefNum`` (the invoice's "PO/Check Number"). An invoice of an
account with ``PO_Required__c`` and no PO is held as a ``missing_po`` exception whose detail
names where finance sets it (the Opportunity or quote id and the field).
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from finsync_pipeline.errors import ConfigurationError
from finsync_pipeline.sources import SOURCES_OFF_ENV, sources_off

PO_SOURCE_ENV = "FINSYNC_PO_SOURCE"
LINK_KEY_ENV = "FINSYNC_PO_OPPORTUNITY_KEY"
DEFAULT_LINK_KEY = "salesforce_opportunity_id"
# Stripe limits custom field names and metadata keys to 40 characters.
MAX_NAME = 40
# A Salesforce API name: 40 characters, a namespace prefix and the __c suffix at most.
MAX_FIELD = 80
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# The Salesforce object each CRM source reads its field from.
CRM_OBJECTS = {"salesforce_opportunity": "Opportunity", "salesforce_quote": "SBQQ__Quote__c"}
_KINDS = ("stripe_custom_field", "stripe_metadata", *CRM_OBJECTS)
_FORMS = (
    "stripe_custom_field:<name>, stripe_metadata:<key>, salesforce_opportunity:<Field> "
    "or salesforce_quote:<Field>"
)
_EXAMPLE = "stripe_custom_field:PO Number"


@dataclass(frozen=True)
class PoSource:
    """A place that holds the PO number: on the Stripe invoice, or on the Salesforce record
    the invoice bills.

    Attributes:
        kind: ``stripe_custom_field``, ``stripe_metadata``, ``salesforce_opportunity`` or
            ``salesforce_quote``.
        name: The custom field's name, the metadata key, or the Salesforce field's API name.
        link_key: The Stripe metadata key naming the Opportunity an invoice bills (read by
            the Salesforce sources).
    """

    kind: str
    name: str
    link_key: str = DEFAULT_LINK_KEY

    @property
    def crm(self) -> bool:
        """Whether the PO is a field of a Salesforce record rather than of the invoice."""
        return self.kind in CRM_OBJECTS

    @property
    def sobject(self) -> str | None:
        """The Salesforce object whose field holds the PO (None for a Stripe source)."""
        return CRM_OBJECTS.get(self.kind)

    @property
    def where(self) -> str:
        """Where finance sets the PO, for an exception's detail."""
        if self.kind == "stripe_custom_field":
            return f"custom field '{self.name}' on the Stripe invoice"
        if self.kind == "stripe_metadata":
            return f"metadata key '{self.name}' on the Stripe invoice"
        if self.kind == "salesforce_opportunity":
            return f"field {self.name} on the Salesforce Opportunity the invoice bills"
        return (
            f"field {self.name} on the primary CPQ quote (SBQQ__Quote__c) of the Salesforce "
            "Opportunity the invoice bills"
        )

    def opportunity_of(self, invoice: Mapping[str, Any]) -> str | None:
        """The Salesforce Opportunity a native Stripe invoice names under ``link_key``.

        The invoice's own ``metadata`` wins over its subscription's
        (``parent.subscription_details.metadata``); a blank or malformed value is no link.
        """
        parent = invoice.get("parent")
        details = parent.get("subscription_details") if isinstance(parent, Mapping) else None
        for metadata in (
            invoice.get("metadata"),
            details.get("metadata") if isinstance(details, Mapping) else None,
        ):
            value = metadata.get(self.link_key) if isinstance(metadata, Mapping) else None
            if isinstance(value, str) and value.strip():
                return value.strip()
        return None

    def read(self, invoice: Mapping[str, Any]) -> str | None:
        """The PO of a native Stripe invoice, or None when it carries none.

        Tolerant like all flattening: a blank value, a null or malformed ``custom_fields``
        or ``metadata`` is no PO. A Salesforce source reads nothing here: its PO is on the
        Opportunity or quote (``logic.purchase_orders``).
        """
        if self.crm:
            return None
        value: Any = None
        if self.kind == "stripe_custom_field":
            fields = invoice.get("custom_fields")
            if isinstance(fields, list):
                wanted = self.name.casefold()
                value = next(
                    (
                        f.get("value")
                        for f in fields
                        if isinstance(f, Mapping)
                        and str(f.get("name") or "").strip().casefold() == wanted
                    ),
                    None,
                )
        else:
            metadata = invoice.get("metadata")
            if isinstance(metadata, Mapping):
                value = metadata.get(self.name)
        if not isinstance(value, str) or not value.strip():
            return None
        return value.strip()


DEFAULT_PO_SOURCE = PoSource("stripe_custom_field", "PO Number")


def po_source(raw: str | None = None) -> PoSource:
    """The configured PO source (from the environment when ``raw`` is None).

    Raises:
        ConfigurationError: The setting is not one of the supported forms; the one-line
            message says what to set.
    """
    text = (os.environ.get(PO_SOURCE_ENV, "") if raw is None else raw).strip()
    if not text:
        return DEFAULT_PO_SOURCE
    kind, sep, name = text.partition(":")
    kind, name = kind.strip(), name.strip()
    hint = f"set it to {_FORMS}, e.g. {_EXAMPLE!r}"
    if not sep:
        raise ConfigurationError(f"{PO_SOURCE_ENV} is {text!r}, not a source:name; {hint}")
    if kind not in _KINDS:
        raise ConfigurationError(f"{PO_SOURCE_ENV}: unknown source {kind!r}; {hint}")
    if not name:
        raise ConfigurationError(f"{PO_SOURCE_ENV} is {text!r}, which names no field; {hint}")
    if kind in CRM_OBJECTS:
        return PoSource(kind, _crm_field(kind, name, hint), _link_key())
    if len(name) > MAX_NAME:
        raise ConfigurationError(
            f"{PO_SOURCE_ENV}: {name[:20]!r}... is longer than Stripe allows (at most "
            f"{MAX_NAME} characters); {hint}"
        )
    return PoSource(kind, name)


def _crm_field(kind: str, name: str, hint: str) -> str:
    """The Salesforce field of a CRM source, safe to put in a SOQL SELECT as it is."""
    if not _FIELD_NAME.match(name) or len(name) > MAX_FIELD:
        raise ConfigurationError(
            f"{PO_SOURCE_ENV}: {name[:40]!r} is not a Salesforce field API name (letters, "
            f"digits and underscores, a field of the {CRM_OBJECTS[kind]} itself, e.g. "
            f"{kind}:PO_Number__c); {hint}"
        )
    if kind == "salesforce_quote" and "cpq" in sources_off():
        raise ConfigurationError(
            f"{PO_SOURCE_ENV}: {kind} reads the Salesforce CPQ quote, but {SOURCES_OFF_ENV} "
            f"switches CPQ off; use salesforce_opportunity:{name}, or turn CPQ back on"
        )
    return name


def _link_key() -> str:
    """The Stripe metadata key naming an invoice's Opportunity (``FINSYNC_PO_OPPORTUNITY_KEY``)."""
    key = os.environ.get(LINK_KEY_ENV, "").strip() or DEFAULT_LINK_KEY
    if len(key) > MAX_NAME:
        raise ConfigurationError(
            f"{LINK_KEY_ENV}: {key[:20]!r}... is longer than a Stripe metadata key may be (at "
            f"most {MAX_NAME} characters); set it to the key naming the Opportunity, e.g. "
            f"{DEFAULT_LINK_KEY}"
        )
    if "[" in key or "]" in key:
        raise ConfigurationError(
            f"{LINK_KEY_ENV}: {key!r} has square brackets, which Stripe metadata keys cannot "
            f"hold; set it to the key naming the Opportunity, e.g. {DEFAULT_LINK_KEY}"
        )
    return key
