"""pytest fixtures for the two test central systems.

In a test module (tests/ is on sys.path via tests/conftest.py)::

    from csms.fixtures import central_system_fixture, strict_csms_fixture  # noqa: F401

The functions are registered under the fixture names ``central_system`` and ``strict_csms`` (``name=``), so a
test's parameter does not shadow the imported function (ruff F811).

    async def test_boot(central_system: TestCentralSystem) -> None:
        ...  # connect the charger to central_system.url

``strict_csms`` installs tests/csms/strict/node_modules with ``npm ci`` once if missing. Without node/npm it
skips locally, but fails when the ``CI`` environment variable is set: CI must never silently skip the strict peer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from csms.central import TestCentralSystem
from csms.strict import StrictCentralSystem, StrictPeerUnavailable, in_ci, strict_unavailable_reason


@pytest.fixture(name="central_system")
async def central_system_fixture() -> AsyncIterator[TestCentralSystem]:
    """A started ``TestCentralSystem`` on 127.0.0.1 (random port); stopped after the test."""
    async with TestCentralSystem() as csms:
        yield csms


@pytest.fixture(name="strict_csms")
async def strict_csms_fixture() -> AsyncIterator[StrictCentralSystem]:
    """A started ``StrictCentralSystem`` (node + ocpp-rpc strictMode); stopped after the test."""
    reason = strict_unavailable_reason()
    if reason is None:
        csms = StrictCentralSystem()
        try:
            await csms.start()
        except StrictPeerUnavailable as exc:
            reason = str(exc)
    if reason is not None:
        if in_ci():
            pytest.fail(f"strict OCPP peer unavailable in CI: {reason}", pytrace=False)
        pytest.skip(f"strict OCPP peer unavailable: {reason}")
    try:
        yield csms
    finally:
        await csms.stop()


# The same fixtures under their own names, for modules that import ``central_system`` / ``strict_csms`` directly.
# Such a module needs noqa F401, and ruff then reports F811 at every test parameter that shadows the import
# (the noqa has to sit on those lines), so importing the ``*_fixture`` names is cleaner.
central_system = central_system_fixture
strict_csms = strict_csms_fixture
