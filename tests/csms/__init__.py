"""Real OCPP 1.6J central systems for tests: ``central.TestCentralSystem`` (Python ``ocpp`` package) and
``strict.StrictCentralSystem`` (npm ``ocpp-rpc`` in strict schema mode). Fixtures: ``csms.fixtures``."""
