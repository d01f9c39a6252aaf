"""Where a customer's purchase order (PO) number is read from: ``FINSYNC_PO_SOURCE``.

A company keeps the PO its customer issued where its billing team types it, so the place is
configuration, not code:

- ``stripe_custom_field:<name>`` (the default, ``stripe_custom_field:PO Number``): the Stripe
  invoice's ``custom_fields``, a list of ``{name, value}`` (at most 4, or null) that Stripe
  prints on the invoice PDF; a customer's ``invoice_settings.custom_fields`` are copied onto
  each new invoice, so a PO set on the customer arrives here too. Names match ignoring case.
- ``stripe_metadata:<key>``: a key of the Stripe invoice's ``metadata``.

The PO lands in NetSuite's ``otherRefNum`` (the invoice's "PO/Check Number"). An invoice of an
account with ``PO_Required__c`` and no PO is held as a ``missing_po`` exception.

A CRM source (the CPQ quote's or the renewal Opportunity's field) is refused for now: finsync
does not link an invoice to the Opportunity or quote it bills (renewals are matched to
invoices by account, currency and term), so there is no record to read the field from.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from finsync_pipeline.errors import ConfigurationError

PO_SOURCE_ENV = "FINSYNC_PO_SOURCE"
# Stripe limits custom field names and metadata keys to 40 characters.
MAX_NAME = 40
_KINDS = ("stripe_custom_field", "stripe_metadata")
_FORMS = "stripe_custom_field:<name> or stripe_metadata:<key>"
_EXAMPLE = "stripe_custom_field:PO Number"


@dataclass(frozen=True)
class PoSource:
    """A place on the Stripe invoice that holds the PO number.

    Attributes:
        kind: ``stripe_custom_field`` or ``stripe_metadata``.
        name: The custom field's name or the metadata key.
    """

    kind: str
    name: str

    @property
    def where(self) -> str:
        """Where finance sets the PO, for an exception's detail."""
        if self.kind == "stripe_custom_field":
            return f"custom field '{self.name}' on the Stripe invoice"
        return f"metadata key '{self.name}' on the Stripe invoice"

    def read(self, invoice: Mapping[str, Any]) -> str | None:
        """The PO of a native Stripe invoice, or None when it carries none.

        Tolerant like all flattening: a blank value, a null or malformed ``custom_fields``
        or ``metadata`` is no PO.
        """
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
    if kind in ("opportunity", "quote"):
        raise ConfigurationError(
            f"{PO_SOURCE_ENV}: {kind!r} is not supported: finsync does not link an invoice to "
            f"the Salesforce Opportunity or quote it bills; {hint}"
        )
    if kind not in _KINDS:
        raise ConfigurationError(f"{PO_SOURCE_ENV}: unknown source {kind!r}; {hint}")
    if not name:
        raise ConfigurationError(f"{PO_SOURCE_ENV} is {text!r}, which names no field; {hint}")
    if len(name) > MAX_NAME:
        raise ConfigurationError(
            f"{PO_SOURCE_ENV}: {name[:20]!r}... is longer than Stripe allows (at most "
            f"{MAX_NAME} characters); {hint}"
        )
    return PoSource(kind, name)
