#!/usr/bin/env python3
"""A keyledger client in plain Python: the official NATS client (`nats-py`) and the standard
library, nothing generated from the Rust code. It follows API.md only.

It discovers the service, creates an AES-256-GCM key as a tenant admin (idempotently, with a
request_id), grants a user encrypt+decrypt, encrypts and decrypts as that user with associated
data, and checks the error replies of a wrong AAD, a use without a grant, a malformed body and a
request without a token. Any mismatch exits non-zero; success prints `python example: OK`.

Environment:
    KEYLEDGER_NATS         NATS URL, e.g. nats://127.0.0.1:4222
    KEYLEDGER_LEDGER       ledger id (the <ledger> of keyledger.v1.<ledger>.<operation>)
    KEYLEDGER_ADMIN_TOKEN  bearer token with role tenant-admin
    KEYLEDGER_USER_TOKEN   bearer token of the user (same tenant, no role needed)
    KEYLEDGER_USER         the user token's principal (its `sub` claim)
"""

import asyncio
import base64
import json
import os
import secrets
import sys

import nats
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

SERVICE = "keyledger"
API_VERSION = "v1"
# Seconds to wait for one reply. The service answers a write only once it is durably stored.
REQUEST_TIMEOUT = 10.0
# Seconds to collect discovery replies ($SRV.* requests may be answered by several replicas).
DISCOVERY_WINDOW = 1.0
# The operations of API.md; every replica of the ledger must serve all of them.
OPERATIONS = [
    "nonce", "create", "import", "describe", "list", "rotate", "set-versions", "activate",
    "suspend", "deactivate", "compromise", "schedule-destroy", "cancel-destroy", "destroy",
    "grant", "revoke", "get-material", "encrypt", "decrypt", "rewrap", "generate-data-key",
    "sign", "verify", "mac", "verify-mac", "random",
]


class Mismatch(Exception):
    """The service did not answer as API.md says."""


class ServiceError(Exception):
    """An error reply: `{"error": {"code", "message"}}` plus its status header."""

    def __init__(self, code, status, message):
        super().__init__(f"{code} ({status}): {message}")
        self.code = code
        self.status = status
        self.message = message


def b64(data: bytes) -> str:
    """Binary values travel as standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def expect(cond, what):
    if not cond:
        raise Mismatch(what)


def header(msg, name):
    """A reply header, looked up case-insensitively (None if absent)."""
    for k, v in (msg.headers or {}).items():
        if k.lower() == name.lower():
            return v
    return None


def env(name):
    value = os.environ.get(name, "")
    if not value:
        print(f"python example: environment variable {name} is not set", file=sys.stderr)
        sys.exit(2)
    return value


class Keyledger:
    """A tiny client: one NATS request per call to keyledger.v1.<ledger>.<operation>."""

    def __init__(self, nc, ledger):
        self.nc = nc
        self.prefix = f"keyledger.{API_VERSION}.{ledger}"

    async def raw(self, op, body: bytes, headers=None):
        """Sends `body` as is; returns the reply message."""
        try:
            return await self.nc.request(
                f"{self.prefix}.{op}", body, timeout=REQUEST_TIMEOUT, headers=headers
            )
        except NoRespondersError:
            raise Mismatch(f"no keyledger replica serves {self.prefix}.{op}") from None
        except NatsTimeoutError:
            raise Mismatch(f"no reply to {op} within {REQUEST_TIMEOUT} s") from None

    async def call(self, op, token=None, **fields):
        """Calls `op` with a JSON body; returns (result, seq) or raises ServiceError."""
        body = dict(fields)
        if token is not None:
            body["token"] = token
        msg = await self.raw(op, json.dumps(body).encode())
        return decode_reply(msg)


def decode_reply(msg):
    try:
        reply = json.loads(msg.data)
    except ValueError as e:
        raise Mismatch(f"reply is not JSON: {e}: {msg.data[:200]!r}") from None
    if "error" in reply:
        err = reply["error"]
        status = header(msg, "Nats-Service-Error-Code")
        # Error replies carry the code twice: in the body and in Keyledger-Error.
        expect(header(msg, "Keyledger-Error") == err["code"],
               f"Keyledger-Error header {header(msg, 'Keyledger-Error')!r} != {err['code']!r}")
        expect(status is not None and status.isdigit(), f"bad status header {status!r}")
        raise ServiceError(err["code"], int(status), err["message"])
    expect(set(reply) == {"ok", "seq"}, f"reply keys {sorted(reply)}")
    expect(isinstance(reply["seq"], int) and reply["seq"] >= 0, f"seq {reply['seq']!r}")
    return reply["ok"], reply["seq"]


async def decoded(msg):
    return decode_reply(msg)


async def expect_error(coro, code, status):
    """Awaits a call that must fail with `code` and `status`; returns the error."""
    try:
        result = await coro
    except ServiceError as e:
        expect((e.code, e.status) == (code, status),
               f"expected {code} ({status}), got {e.code} ({e.status}): {e.message}")
        return e
    raise Mismatch(f"expected {code} ({status}), got a result: {result!r}")


async def discover(nc, verb):
    """Sends $SRV.<verb>.keyledger and collects every replica's answer."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(f"$SRV.{verb}.{SERVICE}", b"", reply=inbox)
    replies = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DISCOVERY_WINDOW
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await sub.next_msg(timeout=left)
        except NatsTimeoutError:
            break
        replies.append(json.loads(msg.data))
    await sub.unsubscribe()
    return replies


async def run(nc, ledger, admin_token, user_token, user):
    # 1. Discovery: at least one replica answers PING; INFO shows this ledger's endpoints.
    pings = await discover(nc, "PING")
    expect(len(pings) >= 1, "no reply to $SRV.PING.keyledger")
    for p in pings:
        expect(p.get("type") == "io.nats.micro.v1.ping_response", f"ping reply {p}")
        expect(p.get("name") == SERVICE, f"ping reply names {p.get('name')!r}")
    prefix = f"keyledger.{API_VERSION}.{ledger}."
    infos = [
        i for i in await discover(nc, "INFO")
        if any(e.get("subject", "").startswith(prefix) for e in i.get("endpoints", []))
    ]
    expect(len(infos) >= 1, f"no replica of ledger {ledger} in $SRV.INFO.keyledger")
    for i in infos:
        served = {e["subject"][len(prefix):] for e in i["endpoints"]}
        missing = [op for op in OPERATIONS if op not in served]
        expect(not missing, f"replica {i.get('id')} does not serve {missing}")
    print(f"discovered {len(pings)} keyledger replica(s), {len(infos)} for ledger {ledger}")

    kl = Keyledger(nc, ledger)

    # 2. Create a key as the tenant admin. A retry with the same request_id is answered with
    #    the same key and the same ledger sequence: nothing is created twice.
    name = f"py-example-{secrets.token_hex(4)}"
    request_id = f"py-create-{secrets.token_hex(8)}"
    key, seq = await kl.call("create", admin_token, request_id=request_id, name=name,
                             type="aes256-gcm", labels={"example": "python"})
    expect(key["type"] == "aes256-gcm" and key["state"] == "active", f"created {key}")
    expect(key["name"] == name and key["latest_version"] == 1, f"created {key}")
    expect(key["labels"] == {"example": "python"}, f"labels {key['labels']}")
    again, seq_again = await kl.call("create", admin_token, request_id=request_id, name=name,
                                     type="aes256-gcm", labels={"example": "python"})
    expect((again["key"], seq_again) == (key["key"], seq),
           f"retried create gave {again['key']}@{seq_again}, first {key['key']}@{seq}")
    key_id = key["key"]
    print(f"created key {key_id} ({name}) at seq {seq}")

    # 3. Roles never use material: the admin needs a grant too.
    await expect_error(
        kl.call("encrypt", admin_token, key=key_id, plaintext=b64(b"x")), "forbidden", 403)

    # 4. Grant the user encrypt and decrypt.
    grant, seq = await kl.call("grant", admin_token, key=key_id,
                               grantee={"principal": user}, operations=["encrypt", "decrypt"])
    expect(grant["key"] == key_id and grant["grant_id"], f"grant {grant}")
    print(f"granted {user} encrypt+decrypt ({grant['grant_id']}) at seq {seq}")

    # 5. Encrypt and decrypt as the user, with associated data.
    plaintext = "card 4111 1111 1111 1111 \N{EURO SIGN}".encode()
    aad = b"order-42"
    ct, seq = await kl.call("encrypt", user_token, key=key_id, plaintext=b64(plaintext),
                            aad=b64(aad))
    expect(ct["ciphertext"].startswith("kl:v1:") and ct["version"] == 1, f"encrypt {ct}")
    expect(ct["key"] == key_id, f"encrypt {ct}")
    pt, seq = await kl.call("decrypt", user_token, key=key_id, ciphertext=ct["ciphertext"],
                            aad=b64(aad))
    expect(unb64(pt["plaintext"]) == plaintext, f"decrypted {pt}")
    expect(pt["version"] == 1, f"decrypt {pt}")
    print(f"encrypted and decrypted {len(plaintext)} bytes ({ct['ciphertext'][:16]}...)")
    await expect_error(
        kl.call("decrypt", user_token, key=key_id, ciphertext=ct["ciphertext"],
                aad=b64(b"order-43")),
        "decrypt-failed", 400)

    # 6. A malformed body: code malformed-request, status header 400.
    msg = await kl.raw("encrypt", b"{not json")
    err = await expect_error(decoded(msg), "malformed-request", 400)
    expect(header(msg, "Nats-Service-Error-Code") == "400",
           f"Nats-Service-Error-Code {header(msg, 'Nats-Service-Error-Code')!r}")
    expect(header(msg, "Nats-Service-Error"), "no Nats-Service-Error header")
    print(f"malformed body refused: {err.code}: {err.message}")

    # 7. No token: token-missing (401, the caller is not authenticated).
    err = await expect_error(
        kl.call("encrypt", key=key_id, plaintext=b64(b"x")), "token-missing", 401)
    print(f"request without token refused: {err.code}")


async def main():
    url = env("KEYLEDGER_NATS")
    ledger = env("KEYLEDGER_LEDGER")
    admin_token = env("KEYLEDGER_ADMIN_TOKEN")
    user_token = env("KEYLEDGER_USER_TOKEN")
    user = env("KEYLEDGER_USER")
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=2)
    try:
        await run(nc, ledger, admin_token, user_token, user)
    finally:
        await nc.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (Mismatch, ServiceError) as e:
        print(f"python example: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    print("python example: OK")
