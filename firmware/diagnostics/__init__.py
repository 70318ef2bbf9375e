"""Diagnostics bundles (logs, redacted config, session ledger) and their upload, for the CSMS and technicians.

Pure building blocks: :mod:`.bundle` writes a bundle into a directory, :mod:`.upload` sends a file to an
HTTP(S) or FTP(S) location, :mod:`.ledger` reads the session ledger without blocking a running daemon. The OCPP
side (firmware.ocpp.v16.diagnostics) and the ``evse diag`` / ``evse sessions`` commands both use them.
"""
