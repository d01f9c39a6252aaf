"""The synthetic company: deterministic, internally consistent, with the planted problems."""

import calendar
import datetime
from collections import Counter

import pytest

from finsync_pipeline.sandbox.generator import (
    LEGAL_ENTITIES,
    Company,
    CompanySpec,
    generate,
    salesforce_id,
)
from finsync_pipeline.sandbox.invoice_shapes import SHAPES

FIXED = CompanySpec(accounts=300, months=12, seed=7, end=datetime.date(2026, 3, 31))


@pytest.fixture(scope="module")
def default_company() -> Company:
    return generate(FIXED)


def test_same_spec_gives_identical_company(default_company: Company) -> None:
    again = generate(FIXED)
    assert again.salesforce == default_company.salesforce
    assert again.stripe == default_company.stripe
    assert again.netsuite == default_company.netsuite
    assert again.planted == default_company.planted


def test_different_seed_gives_different_company(default_company: Company) -> None:
    other = generate(CompanySpec(accounts=300, months=12, seed=8, end=FIXED.end))
    assert other.stripe["customer"][0]["id"] != default_company.stripe["customer"][0]["id"]
    assert other.salesforce["Account"] != default_company.salesforce["Account"]


def test_every_customer_links_to_an_existing_billing_account(default_company: Company) -> None:
    accounts = {a["Id"]: a for a in default_company.salesforce["Account"]}
    customers = default_company.stripe["customer"]
    linked = [c["metadata"]["salesforce_account_id"] for c in customers]
    assert all(account_id in accounts for account_id in linked)
    assert len(set(linked)) == len(linked), "one Stripe customer per billing account"
    parents = {a["ParentId"] for a in accounts.values() if a["ParentId"]}
    assert parents and not parents & set(linked), "parent accounts have no Stripe customer"
    share = len(parents) / len(accounts)
    assert 0.10 <= share <= 0.20


def test_customer_currency_matches_its_legal_entity(default_company: Company) -> None:
    for customer in default_company.stripe["customer"]:
        entity = customer["metadata"]["legal_entity"]
        if entity == "ZZ99":
            continue
        assert customer["currency"] == LEGAL_ENTITIES[entity][1].lower()


def test_invoices_tie_out_except_planted(default_company: Company) -> None:
    planted_lines = {p["id"] for p in default_company.planted["missing_amount"]}
    checked = 0
    for inv in default_company.stripe["invoice"]:
        lines = inv["lines"]["data"]
        if any(line["id"] in planted_lines for line in lines):
            assert any(line["amount"] is None for line in lines)
            continue
        lines_amount = sum(line["amount"] for line in lines)
        own = sum(
            d["amount"]
            for line in lines
            for d in line["discount_amounts"]
            if d["discount"] in line["discounts"]
        )
        # Stripe: the subtotal has item discounts incorporated, not the invoice's.
        assert lines_amount - own == inv["subtotal"]
        taxes = sum(t["amount"] for t in inv["total_taxes"])
        exclusive = sum(t["amount"] for t in inv["total_taxes"] if t["tax_behavior"] == "exclusive")
        discount = sum(d["amount"] for d in inv["total_discount_amounts"])
        # Stripe's identities: inclusive tax is inside the line amounts already.
        assert lines_amount - discount + exclusive == inv["total"]
        assert inv["total_excluding_tax"] + taxes == inv["total"]
        assert taxes == sum(t["amount"] for line in lines for t in line["taxes"])
        assert discount == sum(d["amount"] for line in lines for d in line["discount_amounts"])
        checked += 1
    assert checked > 1000


def test_paid_invoices_link_a_succeeded_payment_of_the_total(default_company: Company) -> None:
    intents = {p["id"]: p for p in default_company.stripe["payment_intent"]}
    charges = {c["payment_intent"]: c for c in default_company.stripe["charge"]}
    for inv in default_company.stripe["invoice"]:
        if inv["status"] != "paid":
            # An open invoice may carry a declined attempt, never money received.
            assert all(p["status"] == "open" for p in inv["payments"]["data"])
            assert all(p["amount_paid"] == 0 for p in inv["payments"]["data"])
            continue
        if inv["total"] <= 0:
            # A 100%-off or net-negative invoice is paid on finalization: Stripe collects
            # nothing (a negative total is credit on the customer's balance).
            assert inv["payments"]["data"] == [] and inv["amount_paid"] == 0
            continue
        if inv.get("paid_out_of_band"):
            # Paid by wire outside Stripe: the money is in amount_paid, with no payment.
            assert inv["payments"]["data"] == [] and inv["amount_paid"] == inv["total"]
            continue
        (payment,) = inv["payments"]["data"]
        intent = intents[payment["payment"]["payment_intent"]]
        assert intent["status"] == "succeeded"
        # What was due: the total, less any customer credit Stripe applied.
        assert intent["amount"] == inv["amount_due"] == charges[intent["id"]]["amount"]
        assert inv["amount_due"] == max(0, inv["total"] + inv["starting_balance"])


def test_planted_settlements_are_what_stripe_shows_for_them(default_company: Company) -> None:
    invoices = {i["id"]: i for i in default_company.stripe["invoice"]}
    planted = default_company.planted
    assert planted["paid_out_of_band"] and planted["uncollectible"]
    for p in planted["paid_out_of_band"]:
        inv = invoices[p["id"]]
        assert (inv["status"], inv["paid_out_of_band"], inv["amount_remaining"]) == (
            "paid",
            True,
            0,
        )
    for p in planted["uncollectible"]:
        inv = invoices[p["id"]]
        assert inv["status"] == "uncollectible" and inv["payments"]["data"] == []
        assert (inv["amount_paid"], inv["amount_remaining"]) == (0, inv["total"])
        assert inv["status_transitions"]["marked_uncollectible_at"]
    settled = {p["id"] for k in ("paid_out_of_band", "uncollectible") for p in planted[k]}
    for event in default_company.stripe["event"]:
        snap = event["data"]["object"]
        if snap.get("object") == "invoice" and snap.get("id") in settled:
            assert event["type"] != "invoice.payment_succeeded"
            assert snap["status"] in ("draft", "open", invoices[snap["id"]]["status"])


def test_planted_invoice_shapes_are_the_shapes_they_claim(default_company: Company) -> None:
    invoices = {i["id"]: i for i in default_company.stripe["invoice"]}
    planted = default_company.planted
    for p in planted["coupon_discount"]:
        inv = invoices[p["id"]]
        assert inv["discounts"] and inv["total_discount_amounts"]
        assert all(line["discount_amounts"] for line in inv["lines"]["data"])
    for p in planted["line_discount"]:
        inv = invoices[p["id"]]
        assert not inv["discounts"]
        assert inv["lines"]["data"][0]["discounts"]
    for p in planted["tax_inclusive"]:
        inv = invoices[p["id"]]
        assert {t["tax_behavior"] for t in inv["total_taxes"]} == {"inclusive"}
        assert inv["total"] == inv["subtotal"] > inv["total_excluding_tax"]
    for p in planted["full_discount"]:
        inv = invoices[p["id"]]
        assert (inv["status"], inv["total"], inv["amount_due"]) == ("paid", 0, 0)
    intents = {p["id"] for p in default_company.stripe["payment_intent"]}
    for event in default_company.stripe["event"]:
        obj = event["data"]["object"]
        if obj.get("object") == "payment_intent":
            assert obj["id"] in intents
        if obj.get("object") == "invoice" and obj["id"] in invoices:
            assert obj["total"] == invoices[obj["id"]]["total"]


def test_line_counts_exercise_pagination(default_company: Company) -> None:
    counts = Counter(len(inv["lines"]["data"]) for inv in default_company.stripe["invoice"])
    assert counts[25] >= 1
    assert sum(n for size, n in counts.items() if size > 10) >= 5
    small = generate(CompanySpec(accounts=20, months=3, seed=3, end=FIXED.end))
    assert sum(1 for inv in small.stripe["invoice"] if len(inv["lines"]["data"]) > 10) >= 3


def test_a_downgrade_credit_pays_the_next_invoice_in_part_as_stripe_bills_it(
    default_company: Company,
) -> None:
    invoices = {i["id"]: i for i in default_company.stripe["invoice"]}
    customers = {c["id"]: c for c in default_company.stripe["customer"]}
    planted = default_company.planted
    assert len(planted["net_negative"]) == len(planted["paid_from_balance"]) >= 1
    for p, q in zip(planted["net_negative"], planted["paid_from_balance"], strict=True):
        down, later = invoices[p["id"]], invoices[q["id"]]
        assert down["customer"] == later["customer"]
        assert (
            down["status_transitions"]["finalized_at"] < later["status_transitions"]["finalized_at"]
        )
        # The downgrade: a proration charge and a larger proration credit; nothing is due.
        amounts = [line["amount"] for line in down["lines"]["data"]]
        assert amounts[0] > 0 > amounts[1] and down["total"] < 0
        assert all(
            line["parent"]["subscription_item_details"]["proration"]
            for line in down["lines"]["data"]
        )
        assert (down["status"], down["amount_due"], down["billing_reason"]) == (
            "paid",
            0,
            "subscription_update",
        )
        assert down["ending_balance"] == down["starting_balance"] + down["total"]
        # The next invoice took the whole credit off what was due and charged the rest.
        assert later["starting_balance"] == down["total"]
        assert later["amount_due"] == later["total"] + later["starting_balance"] > 0
        assert (later["ending_balance"], later["amount_remaining"]) == (0, 0)
        assert later["amount_paid"] == later["amount_due"]
        assert customers[later["customer"]]["balance"] == 0
        updates = [
            e["data"]["object"]["balance"]
            for e in default_company.stripe["event"]
            if e["type"] == "customer.updated" and e["data"]["object"]["id"] == down["customer"]
        ]
        assert updates == [down["total"], 0]


def test_all_planted_kinds_present_and_real(default_company: Company) -> None:
    planted = default_company.planted
    assert set(planted) == {
        "malformed_currency",
        "missing_amount",
        "invalid_date",
        "bad_currency_code",
        "unmapped_product",
        "unknown_legal_entity",
        "tax_mismatch",
        "invalid_quantity",
        "deleted_draft",
        "paid_out_of_band",
        "uncollectible",
        "net_negative",
        "paid_from_balance",
        "missing_po",
        # Tax profiles Stripe rightly bills no tax: no problem, but planted to be checked.
        "tax_exempt_customer",
        "reverse_charge_customer",
        *SHAPES,
    }
    assert all(planted.values())
    invoices = {i["id"]: i for i in default_company.stripe["invoice"]}
    opps = {o["Id"]: o for o in default_company.salesforce["Opportunity"]}
    accounts = {a["Id"]: a for a in default_company.salesforce["Account"]}
    assert all(invoices[p["id"]]["currency"] == "usdx" for p in planted["malformed_currency"])
    assert all(opps[p["id"]]["CloseDate"] == "2025-02-30" for p in planted["invalid_date"])
    assert all(accounts[p["id"]]["CurrencyIsoCode"] == "XXX" for p in planted["bad_currency_code"])
    for p in planted["unmapped_product"]:
        products = {
            line["pricing"]["price_details"]["product"]
            for line in invoices[p["id"]]["lines"]["data"]
        }
        assert "prod_legacy" in products
    legacy_users = {
        inv["id"]
        for inv in invoices.values()
        if any(
            line["pricing"]["price_details"]["product"] == "prod_legacy"
            for line in inv["lines"]["data"]
        )
    }
    assert legacy_users == {p["id"] for p in planted["unmapped_product"]}
    zz = [p for p in planted["unknown_legal_entity"] if p["system"] == "salesforce"]
    assert all(accounts[p["id"]]["Legal_Entity__c"] == "ZZ99" for p in zz)
    # A deleted draft no longer exists; only its created and deleted events name it.
    (deleted,) = planted["deleted_draft"]
    assert deleted["id"] not in invoices
    events = [
        e for e in default_company.stripe["event"] if e["data"]["object"]["id"] == deleted["id"]
    ]
    assert [e["type"] for e in events] == ["invoice.created", "invoice.deleted"]
    assert {e["data"]["object"]["status"] for e in events} == {"draft"}
    customers = {c["id"] for c in default_company.stripe["customer"]}
    assert events[0]["data"]["object"]["customer"] in customers
    # Within the last 30 days of the history, so a run the day after still reads its events.
    end_ts = calendar.timegm(FIXED.end.timetuple()) + 86399
    assert end_ts - 30 * 86400 < events[0]["created"] < events[1]["created"] <= end_ts
    # NetSuite starts with master data only: the pipeline creates every transaction.
    assert not default_company.netsuite.keys() - {"subsidiary", "currency", "item", "account"}


def test_renewal_opportunity_amount_is_the_renewal_invoice_subtotal(
    default_company: Company,
) -> None:
    opps = {o["Id"]: o for o in default_company.salesforce["Opportunity"]}
    contracts = {c["Id"]: c for c in default_company.salesforce["Contract"]}
    renewals_checked = 0
    for inv in default_company.stripe["invoice"]:
        meta = inv["parent"]["subscription_details"]["metadata"]
        opp = opps[meta["salesforce_opportunity_id"]]
        contract = contracts[meta["salesforce_contract_id"]]
        assert opp["ContractId"] == contract["Id"]
        period_start = datetime.datetime.fromtimestamp(inv["period_start"], datetime.UTC).date()
        if opp["Type"] == "Renewal" and contract["StartDate"] == period_start.isoformat():
            exponent = 0 if inv["currency"] == "jpy" else 2
            assert opp["Amount"].scaleb(exponent) == inv["subtotal"]
            assert opp["StageName"] == "Closed Won" and opp["IsWon"] and opp["IsClosed"]
            renewals_checked += 1
    assert renewals_checked > 10


def test_jpy_amounts_are_whole_yen(default_company: Company) -> None:
    jpy = [i for i in default_company.stripe["invoice"] if i["currency"] == "jpy"]
    assert jpy
    usd_platform = 50000
    platform = [
        line["amount"]
        for inv in jpy
        for line in inv["lines"]["data"]
        if line["pricing"]["price_details"]["price"] == "price_platform_jpy_month"
    ]
    assert platform and all(amount == usd_platform * 3 // 2 for amount in platform)


def test_salesforce_ids_carry_the_case_checksum() -> None:
    assert salesforce_id("001", "001000000000001") == "001000000000001AAA"
    # The example Salesforce documents for its 15- to 18-character conversion.
    assert salesforce_id("001", "001D000000IqhSL") == "001D000000IqhSLIAZ"


def test_credit_notes_tie_out_and_link_their_invoice(default_company: Company) -> None:
    invoices = {i["id"]: i for i in default_company.stripe["invoice"]}
    notes = default_company.stripe["credit_note"]
    assert {(n["type"], n["status"]) for n in notes} >= {
        ("post_payment", "issued"),
        ("pre_payment", "issued"),
        ("pre_payment", "void"),
    }
    assert {n["reason"] for n in notes} >= {"duplicate", "order_change", "product_unsatisfactory"}
    assert any(len(n["lines"]["data"]) > 10 for n in notes), "credit note lines must page"
    for note in notes:
        inv = invoices[note["invoice"]]
        assert note["customer"] == inv["customer"] and note["currency"] == inv["currency"]
        lines = note["lines"]["data"]
        tax = sum(t["amount"] for line in lines for t in line["taxes"])
        assert sum(line["amount"] for line in lines) == note["subtotal"]
        assert note["subtotal"] + tax == note["total"] == note["amount"]
        assert sum(t["amount"] for t in note["total_taxes"]) == tax
        assert 0 < note["total"] <= inv["total"]
        assert note["created"] > inv["status_transitions"]["finalized_at"]
        invoice_lines = {line["id"] for line in inv["lines"]["data"]}
        assert all(
            line["invoice_line_item"] in invoice_lines
            for line in lines
            if line["type"] == "invoice_line_item"
        )
        if note["type"] == "post_payment":
            assert inv["status"] == "paid"
            assert sum(r["amount_refunded"] for r in note["refunds"]) == note["total"]
        else:
            assert inv["status"] == "open" and note["refunds"] == []
        if note["status"] == "void":
            assert note["voided_at"] > note["created"]
    for inv in invoices.values():
        issued = [n for n in notes if n["invoice"] == inv["id"] and n["status"] == "issued"]
        post = sum(n["total"] for n in issued if n["type"] == "post_payment")
        pre = sum(n["total"] for n in issued if n["type"] == "pre_payment")
        assert inv["post_payment_credit_notes_amount"] == post
        assert inv["pre_payment_credit_notes_amount"] == pre
        if inv["status"] == "open":
            assert inv["amount_remaining"] == inv["total"] - pre


def test_refunds_never_exceed_their_charge(default_company: Company) -> None:
    charges = {c["id"]: c for c in default_company.stripe["charge"]}
    refunds = default_company.stripe["refund"]
    by_charge: dict[str, int] = {}
    for refund in refunds:
        charge = charges[refund["charge"]]
        assert refund["payment_intent"] == charge["payment_intent"]
        assert refund["currency"] == charge["currency"] and refund["status"] == "succeeded"
        assert refund["created"] >= charge["created"]
        by_charge[charge["id"]] = by_charge.get(charge["id"], 0) + refund["amount"]
    for charge_id, refunded in by_charge.items():
        charge = charges[charge_id]
        assert refunded == charge["amount_refunded"] <= charge["amount"]
        assert charge["refunded"] == (refunded == charge["amount"])
        assert {r["id"] for r in charge["refunds"]["data"]} == {
            r["id"] for r in refunds if r["charge"] == charge_id
        }
    full = sum(charges[c]["refunded"] for c in by_charge)
    assert 0 < full < len(by_charge), "both full and partial refunds"


def test_declined_payments_belong_to_open_invoices(default_company: Company) -> None:
    invoices = {i["id"]: i for i in default_company.stripe["invoice"]}
    failed = [p for p in default_company.stripe["payment_intent"] if p["status"] != "succeeded"]
    assert failed
    charges = {c["id"]: c for c in default_company.stripe["charge"]}
    linked = {
        p["payment"]["payment_intent"]: inv
        for inv in invoices.values()
        for p in inv["payments"]["data"]
    }
    for intent in failed:
        assert intent["status"] == "requires_payment_method"
        assert intent["last_payment_error"]["code"] == "card_declined"
        assert intent["amount_received"] == 0
        inv = linked[intent["id"]]
        assert inv["status"] == "open" and intent["amount"] == inv["amount_remaining"]
        assert charges[intent["latest_charge"]]["status"] == "failed"


def test_events_tell_each_adjustment_in_order(default_company: Company) -> None:
    events = default_company.stripe["event"]
    assert [e["created"] for e in events] == sorted(e["created"] for e in events)
    by_type: dict[str, set[str]] = {}
    for event in events:
        by_type.setdefault(event["type"], set()).add(event["data"]["object"]["id"])
    stripe = default_company.stripe
    assert by_type["credit_note.created"] == {n["id"] for n in stripe["credit_note"]}
    assert by_type["credit_note.voided"] == {
        n["id"] for n in stripe["credit_note"] if n["status"] == "void"
    }
    assert by_type["refund.created"] == {r["id"] for r in stripe["refund"]}
    assert by_type["charge.refunded"] == {r["charge"] for r in stripe["refund"]}
    failed = {p["id"] for p in stripe["payment_intent"] if p["status"] != "succeeded"}
    assert by_type["payment_intent.payment_failed"] == failed
    assert by_type["invoice.voided"] == {
        i["id"] for i in stripe["invoice"] if i["status"] == "void"
    }
    end = FIXED.end
    last = max(e["created"] for e in events)
    assert datetime.datetime.fromtimestamp(last, datetime.UTC).date() <= end


def test_cpq_lines_match_the_stripe_items_they_quote(default_company: Company) -> None:
    sf = default_company.salesforce
    quotes = {q["Id"]: q for q in sf["SBQQ__Quote__c"]}
    opps = {o["Id"]: o for o in sf["Opportunity"]}
    contracts = {c["Id"]: c for c in sf["Contract"]}
    planted = {p["id"] for p in default_company.planted["invalid_quantity"]}
    assert planted
    items = {
        item["id"]: (sub, item)
        for sub in default_company.stripe["subscription"]
        for item in sub["items"]["data"]
    }
    checked = 0
    for line in sf["SBQQ__QuoteLine__c"]:
        quote = quotes[line["SBQQ__Quote__c"]]
        opp = opps[quote["SBQQ__Opportunity2__c"]]
        assert quote["SBQQ__Account__c"] == opp["AccountId"]
        assert line["CurrencyIsoCode"] == opp["CurrencyIsoCode"] == quote["CurrencyIsoCode"]
        sub, item = items[line["Stripe_Subscription_Item_Id__c"]]
        assert line["SBQQ__ProductCode__c"] == item["price"]["product"]
        exponent = 0 if sub["currency"] == "jpy" else 2
        assert line["SBQQ__NetPrice__c"].scaleb(exponent) == item["price"]["unit_amount"]
        if quote["SBQQ__Type__c"] == "Amendment":
            assert line["SBQQ__PriorQuantity__c"] == item["quantity"]
            assert contracts[quote["SBQQ__MasterContract__c"]]["Id"] == opp["ContractId"]
            assert opp["Type"] == "Amendment" and opp["StageName"] == "Closed Won"
            continue
        expected = -item["quantity"] if line["Id"] in planted else item["quantity"]
        assert line["SBQQ__Quantity__c"] == expected
        assert opp["Type"] == ("New Business" if quote["SBQQ__Type__c"] == "Quote" else "Renewal")
        checked += 1
    assert checked > 500


def test_cpq_subscriptions_follow_contracts_renewals_and_amendments(
    default_company: Company,
) -> None:
    sf = default_company.salesforce
    subs = {s["Id"]: s for s in sf["SBQQ__Subscription__c"]}
    lines = {q["Id"]: q for q in sf["SBQQ__QuoteLine__c"]}
    contracts = {c["Id"]: c for c in sf["Contract"]}
    deltas = [s for s in subs.values() if s["SBQQ__RevisedSubscription__c"]]
    assert deltas, "some subscriptions are amended mid-term"
    for sub in subs.values():
        contract = contracts[sub["SBQQ__Contract__c"]]
        assert sub["SBQQ__Account__c"] == contract["AccountId"]
        assert contract["StartDate"] <= sub["SBQQ__SubscriptionStartDate__c"]
        assert sub["SBQQ__SubscriptionEndDate__c"] == contract["EndDate"]
    for delta in deltas:
        original = subs[delta["SBQQ__RevisedSubscription__c"]]
        line = lines[delta["SBQQ__QuoteLine__c"]]
        assert line["SBQQ__UpgradedSubscription__c"] == original["Id"]
        assert (
            delta["SBQQ__Quantity__c"] == line["SBQQ__Quantity__c"] - line["SBQQ__PriorQuantity__c"]
        )
        # Effective after the last day of history: Stripe has billed none of it yet.
        assert delta["SBQQ__SubscriptionStartDate__c"] > default_company.spec.end.isoformat()
    renewals = [q for q in lines.values() if q["SBQQ__RenewedSubscription__c"]]
    assert renewals
    for line in renewals:
        renewed = subs[line["SBQQ__RenewedSubscription__c"]]
        assert renewed["SBQQ__SubscriptionEndDate__c"] < line["SBQQ__StartDate__c"]
        assert renewed["Stripe_Subscription_Item_Id__c"] == line["Stripe_Subscription_Item_Id__c"]


def test_po_required_accounts_are_invoiced_with_their_po_but_a_planted_few(
    default_company: Company,
) -> None:
    required = {a["Id"] for a in default_company.salesforce["Account"] if a["PO_Required__c"]}
    account_of = {
        c["id"]: c["metadata"]["salesforce_account_id"] for c in default_company.stripe["customer"]
    }
    missing = {p["id"] for p in default_company.planted["missing_po"]}
    assert len(missing) == FIXED.accounts // 100
    by_id = {i["id"]: i for i in default_company.stripe["invoice"]}
    assert {by_id[i]["status"] for i in missing} <= {"open", "paid", "uncollectible"}
    for inv in default_company.stripe["invoice"]:
        # Stripe always sends the key: a list of {name, value}, or null.
        fields = inv["custom_fields"]
        if account_of[inv["customer"]] in required and inv["id"] not in missing:
            assert [f["name"] for f in fields] == ["PO Number"], inv["id"]
            assert fields[0]["value"] and len(fields[0]["value"]) <= 140
        else:
            assert fields is None, inv["id"]
    # The planted invoices are held by their missing PO only: no other plant is on them.
    others = {
        p["id"]
        for kind, items in default_company.planted.items()
        if kind != "missing_po"
        for p in items
    }
    assert not missing & others
    # Event snapshots show the invoice as it is.
    for event in default_company.stripe["event"]:
        snap = event["data"]["object"]
        if snap.get("object") == "invoice" and snap["id"] in by_id:
            assert snap["custom_fields"] == by_id[snap["id"]]["custom_fields"]


def test_po_required_opportunities_and_primary_quotes_carry_the_po_of_their_term(
    default_company: Company,
) -> None:
    company = default_company
    required = {a["Id"] for a in company.salesforce["Account"] if a["PO_Required__c"]}
    opps = {o["Id"]: o for o in company.salesforce["Opportunity"]}
    missing = company.planted["missing_po"]
    held_opps = {p["opportunity"] for p in missing}
    assert len(held_opps) == len(missing) and None not in held_opps
    account_of = {
        c["id"]: c["metadata"]["salesforce_account_id"] for c in company.stripe["customer"]
    }
    for inv in company.stripe["invoice"]:
        opp_id = inv["parent"]["subscription_details"]["metadata"]["salesforce_opportunity_id"]
        opp = opps[opp_id]
        if account_of[inv["customer"]] not in required:
            assert opp["PO_Number__c"] is None
        elif opp_id in held_opps:
            # The planted invoice is the only one of its term: no other invoice loses its PO.
            assert opp["PO_Number__c"] is None
            assert inv["id"] in {p["id"] for p in missing}
        else:
            # The Opportunity the invoice bills holds the very PO the invoice quotes.
            assert opp["PO_Number__c"] == inv["custom_fields"][0]["value"], inv["id"]
    quotes = company.salesforce["SBQQ__Quote__c"]
    primary = {q["SBQQ__Opportunity2__c"]: q for q in quotes if q["SBQQ__Primary__c"]}
    for opp_id, opp in opps.items():
        if opp_id in primary:
            assert primary[opp_id]["PO_Number__c"] == opp["PO_Number__c"]
    with_po = [o for o in opps.values() if o["PO_Number__c"]]
    assert with_po and all(o["AccountId"] in required and o["IsWon"] for o in with_po)
