"""Every storage test ends with the database audit: no scenario may break an invariant."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billing_core.services import BillingService


@pytest.fixture(autouse=True)
def audit_after_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    audited = "service" in request.fixturenames and not request.node.get_closest_marker("tampered")
    # Asked for at setup, so the service outlives this fixture's teardown.
    service: BillingService | None = request.getfixturevalue("service") if audited else None
    yield
    if service is not None:
        assert service.check() == []
