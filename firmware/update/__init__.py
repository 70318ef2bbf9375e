"""Firmware updates with A/B slots and automatic rollback (issue 6).

Layout under the update directory (``[update] dir``, default ``firmware/`` in ``[store] dir``; on a hardened unit
that is systemd's writable StateDirectory, since /opt and an overlay root are read-only at run time)::

    state.json          which slot runs, the trial of a new one, the last outcome (firmware.update.state)
    state.lock          flock for read-modify-write of state.json (daemon, launcher, technician CLI)
    job.json            the firmware request being worked on: download, checks, install (firmware.ocpp.v16.firmware)
    downloads/          ``<id>.part`` while downloading, renamed to ``<id>.pkg`` only once complete
    slots/a, slots/b    venvs made by the installer (firmware.update.install); never the one running
    install.lock        one install at a time (daemon or ``evse firmware install``)

The factory venv (/opt/evse/venv) stays the last-resort fallback. The stdlib-only launcher
(``python -m firmware.update.launcher``, run from the factory venv) picks the slot and rolls back a trial that did
not confirm. Modules here that the launcher imports (state, launcher) use the standard library only.
"""
