"""A payment through the Python client generated from payrail's /openapi.json.

Env: PAYRAIL_URL (http://ADDR), PAYRAIL_KEY (scopes payments+admin of a fresh
tenant), PAYRAIL_KIND (payment kind, default `transfer`). A payment needs a
pipeline for its kind: the caller may set one; if the kind has none, this
script sets an empty one (no plugins: the payment moves just its principal).
Prints {"payment_id", "status", "source_balance"} as one JSON line, exit 0;
anything unexpected: why, exit 1.
"""

import json
import os
import sys
import uuid

from payrail_client import AuthenticatedClient
from payrail_client.api.accounts import create_account, get_account
from payrail_client.api.admin import get_pipeline, put_pipeline
from payrail_client.api.payments import create_payment, get_payment
from payrail_client.models import AccountView, CreateAccount, CreatePayment, Currency, PaymentView, Pipeline, PutPipeline


def expect(resp, status, model):
    """The parsed body of a detailed response, or exit 1 saying why."""
    if resp.status_code != status or not isinstance(resp.parsed, model):
        sys.exit(f"expected {status} {model.__name__}, got {int(resp.status_code)}: {resp.content!r}")
    return resp.parsed


url, key = os.environ["PAYRAIL_URL"], os.environ["PAYRAIL_KEY"]
kind = os.environ.get("PAYRAIL_KIND", "transfer")
client = AuthenticatedClient(base_url=url, token=key)

if get_pipeline.sync_detailed(kind, client=client).status_code == 404:
    expect(put_pipeline.sync_detailed(kind, client=client, body=PutPipeline(steps=[])), 200, Pipeline)

for account in [CreateAccount(id="py-src", currency=Currency.EUR, opening_balance=10000), CreateAccount(id="py-dst", currency=Currency.EUR)]:
    expect(create_account.sync_detailed(client=client, body=account), 201, AccountView)

body = CreatePayment(kind=kind, source="py-src", destination="py-dst", amount=2500, currency=Currency.EUR)
paid = expect(create_payment.sync_detailed(client=client, body=body, idempotency_key=str(uuid.uuid4())), 201, PaymentView)
read = expect(get_payment.sync_detailed(paid.id, client=client), 200, PaymentView)
if (read.id, read.status, read.amount) != (paid.id, paid.status, 2500) or read.status != "approved":
    sys.exit(f"payment read back as {read.to_dict()}, made as {paid.to_dict()}")

source = expect(get_account.sync_detailed("py-src", client=client), 200, AccountView)
# 10000 plus what the payment posted to py-src: -2500, and any fee a pipeline added
expected = 10000 + sum(p.amount for p in read.postings if p.account == "py-src")
if source.balance != expected or expected > 7500:
    sys.exit(f"py-src balance {source.balance}, expected {expected} (postings {[p.to_dict() for p in read.postings]})")

wrong = AuthenticatedClient(base_url=url, token="pr_wrong")
if (code := get_account.sync_detailed("py-src", client=wrong).status_code) != 401:
    sys.exit(f"a wrong key got {int(code)}, expected 401")

print(json.dumps({"payment_id": read.id, "status": str(read.status), "source_balance": source.balance}))
