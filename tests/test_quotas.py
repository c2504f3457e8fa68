"""Per-inbound quotas: one inbound's sender fills only its own share of the store."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, parse_config
from tests.backends import RelayBackend
from tests.support import (
    ADMIN_TABLE,
    RelayFactory,
    Sink,
    admin_call,
    destination,
    subscribe_body,
    wait_until,
)

# A leaked secret's inbound with a small quota, beside a journey inbound Mailchimp never retries.
INBOUNDS = """
[[inbound]]
name = "audience-user"
path = "/hooks/user"
kind = "mailchimp"
secret = "s3cret"
source = "user"
quota_mb = 0.02

[[inbound]]
name = "journey"
path = "/hooks/journey"
kind = "journey"
secret = "s3cret"
event_type = "journey.welcome"
quota_mb = 1
"""


async def test_an_inbound_over_its_quota_gets_503_while_another_keeps_taking_webhooks(
    relay_backend: RelayBackend, sink: Sink, start_relay: RelayFactory
) -> None:
    relay = await start_relay(
        relay_backend.config(destination("crm", sink.url("/crm")), inbounds=INBOUNDS,
                             extra=ADMIN_TABLE)
    )  # fmt: skip
    statuses = []
    for i in range(200):
        status, text = await relay.post("/hooks/user", subscribe_body(f"u{i}@example.com"))
        statuses.append(status)
        if status == 503:
            assert "quota" in text
            break
    assert statuses[-1] == 503 and statuses[:-1] == [200] * (len(statuses) - 1)
    taken = len(statuses) - 1
    # 0.02 MB of ~300-byte requests: about seventy of them, never many more.
    assert 40 < taken < 90, taken
    # The journey inbound is not touched by the other's quota.
    status, _ = await relay.post("/hooks/journey", b'{"email": "j@example.com"}', "application/json")
    assert status == 200
    assert await relay_backend.scalar("SELECT count(*) FROM requests WHERE inbound = ?", "audience-user") == taken

    # Once what it stored is delivered and pruned, the inbound takes webhooks again.
    await wait_until(lambda: len(sink.at("/crm")) == taken + 1, what="every delivery")

    async def unfinished() -> bool:
        return await relay_backend.unfinished() == 0

    await wait_until(unfinished, what="every delivery to be recorded")
    status, _ = await admin_call(
        relay, "POST", "/admin/prune", {"older_than_days": 0}, headers={"X-Relay-Operator": "t"}
    )
    assert status == 200

    async def accepted_again() -> bool:
        status, _ = await relay.post("/hooks/user", subscribe_body("again@example.com"))
        return status == 200

    await wait_until(accepted_again, what="the inbound to be under its quota again")


def test_check_config_warns_when_one_inbound_alone_could_fill_a_capped_store() -> None:
    text = f"""
[storage]
url = "sqlite:///x.db"
max_size_mb = 1
{INBOUNDS.replace('quota_mb = 1', '')}
"""
    settings = parse_config(text, {})
    assert settings.inbounds[0].quota_mb == 0.02
    assert settings.inbounds[1].quota_mb is None
    assert any("journey have no quota_mb" in w for w in settings.warnings), settings.warnings
    over = text.replace("max_size_mb = 1", "max_size_mb = 0.01")
    warnings = parse_config(over, {}).warnings
    assert any("add up to 0.02, more than the cap" in w for w in warnings), warnings


def test_quota_mb_must_be_a_positive_number() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(INBOUNDS.replace("quota_mb = 1", "quota_mb = 0"), {})
    assert any("quota_mb: must be greater than 0" in p for p in info.value.problems)
