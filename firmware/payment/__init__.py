"""Payment cores: the local tariff and cost meter, California Pricing messages, and OCMF signed meter records.

Everything here is pure and synchronous (no I/O, time passed in), so sessions, the ledger, the OCPP link and
``evse status`` can share one implementation and tests can pin every rule.
"""
