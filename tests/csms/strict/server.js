'use strict';
// Strict, schema-validating OCPP 1.6J central system for the pievse test suite (ocpp-rpc 2.2.1, strictMode).
//
// usage: node server.js [PORT]          (PORT 0 or absent: any free port on 127.0.0.1)
//
// stdout, one JSON object per line:
//   {"port": N}                                                    first line, once listening
//   {"event": "connect"|"disconnect", "client": id, ...}           connection life cycle
//   {"dir": "in"|"out", "client": id, "frame": [...]|null, "raw": "...", "errors": [...]}   every websocket frame
//   {"reply": n, "result": ...} / {"reply": n, "error": "...", "code": "..."}               control-channel replies
// "errors" lists strict-mode validation failures (ocpp-rpc 'strictValidationFailure') and unparseable or
// malformed frames ('badMessage') tied to that frame; an empty list means the frame was valid.
//
// stdin, one JSON object per line (control channel):
//   {"id": n, "client": "CP-1", "action": "Reset", "payload": {...}}   client.call(action, payload)
//   {"id": n, "op": "drop", "client": "CP-1", "closeFrame": true|false}
//   {"id": n, "op": "refuse", "on": true|false}                        answer new upgrades with HTTP 503
const readline = require('node:readline');
const { RPCServer } = require('ocpp-rpc');

const port = Number(process.argv[2] || 0);
const clients = new Map();
let refusing = false;
let nextTransactionId = 1;

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function now() {
    return new Date().toISOString();
}

function errorInfo(err) {
    if (!err) return { message: 'unknown error' };
    const info = { code: err.rpcErrorCode || err.name || 'Error', message: err.message || String(err) };
    if (err.details && Array.isArray(err.details.errors)) info.schemaErrors = err.details.errors;
    return info;
}

const server = new RPCServer({
    protocols: ['ocpp1.6'],
    strictMode: true,
    pingIntervalMs: 0,
    respondWithDetailedErrors: false,
});

server.auth((accept, reject, handshake) => {
    if (refusing) {
        reject(503, 'Service Unavailable');
        return;
    }
    accept({});
});

function idTagInfo() {
    return { status: 'Accepted' };
}

server.on('client', (client) => {
    const id = client.identity;
    clients.set(id, client);
    emit({
        event: 'connect',
        client: id,
        protocol: client.protocol,
        headers: client.handshake ? client.handshake.headers : {},
    });

    // Frames are queued in arrival/send order and flushed on the next turn of the event loop, so that the
    // synchronous strict validation that follows a frame's 'message' event can attach its errors to it.
    const pending = [];
    let flushScheduled = false;
    const flush = () => {
        flushScheduled = false;
        while (pending.length) emit(pending.shift());
    };
    const schedule = () => {
        if (!flushScheduled) {
            flushScheduled = true;
            setImmediate(flush);
        }
    };
    const findEntry = (dir, messageId) => {
        for (let i = pending.length - 1; i >= 0; i--) {
            const e = pending[i];
            if (e.dir === dir && Array.isArray(e.frame) && e.frame[1] === messageId) return e;
        }
        return null;
    };

    client.on('message', ({ message, outbound }) => {
        const raw = typeof message === 'string' ? message : message.toString('utf8');
        let frame = null;
        try {
            frame = JSON.parse(raw);
        } catch (err) {
            frame = null;
        }
        pending.push({ dir: outbound ? 'out' : 'in', client: id, frame, raw, errors: [] });
        schedule();
    });

    client.on('strictValidationFailure', (ev) => {
        const error = {
            kind: 'strictValidationFailure',
            method: ev.method,
            messageId: ev.messageId,
            isCall: ev.isCall,
            outbound: ev.outbound,
            ...errorInfo(ev.error),
        };
        // inbound CALL / inbound CALLRESULT: attach to the received frame; outbound CALLRESULT: to the reply
        // (which ocpp-rpc turns into an InternalError CALLERROR); outbound CALL: nothing was sent.
        const dir = ev.outbound ? 'out' : 'in';
        const entry = findEntry(dir, ev.messageId);
        if (entry && !(ev.outbound && ev.isCall)) {
            entry.errors.push(error);
        } else if (ev.outbound && !ev.isCall) {
            // the reply has not been queued yet: remember it and attach it when it is sent
            const handler = ({ message, outbound }) => {
                if (!outbound) return;
                const e = findEntry('out', ev.messageId);
                if (e) {
                    e.errors.push(error);
                    client.off('message', handler);
                }
            };
            client.on('message', handler);
        } else {
            pending.push({ dir: 'out', client: id, frame: null, raw: null, errors: [error] });
            schedule();
        }
    });

    client.on('badMessage', ({ buffer, error, response }) => {
        const raw = buffer ? buffer.toString('utf8') : null;
        const err = { kind: 'badMessage', ...errorInfo(error), response };
        for (let i = pending.length - 1; i >= 0; i--) {
            if (pending[i].dir === 'in' && pending[i].raw === raw) {
                pending[i].errors.push(err);
                return;
            }
        }
        pending.push({ dir: 'in', client: id, frame: null, raw, errors: [err] });
        schedule();
    });

    client.on('close', ({ code, reason }) => {
        flush();
        if (clients.get(id) === client) clients.delete(id);
        emit({ event: 'disconnect', client: id, code, reason: String(reason || '') });
    });

    client.handle('BootNotification', () => ({ status: 'Accepted', currentTime: now(), interval: 300 }));
    client.handle('Heartbeat', () => ({ currentTime: now() }));
    client.handle('StatusNotification', () => ({}));
    client.handle('Authorize', () => ({ idTagInfo: idTagInfo() }));
    client.handle('StartTransaction', () => ({ transactionId: nextTransactionId++, idTagInfo: idTagInfo() }));
    client.handle('StopTransaction', ({ params }) => (params && params.idTag ? { idTagInfo: idTagInfo() } : {}));
    client.handle('MeterValues', () => ({}));
    client.handle('DataTransfer', () => ({ status: 'Accepted' }));
    client.handle('DiagnosticsStatusNotification', () => ({}));
    client.handle('FirmwareStatusNotification', () => ({}));
    client.handle('LogStatusNotification', () => ({}));
    client.handle('SignedFirmwareStatusNotification', () => ({}));
    client.handle('SecurityEventNotification', () => ({}));
});

async function control(line) {
    let req;
    try {
        req = JSON.parse(line);
    } catch (err) {
        emit({ reply: null, error: `bad control line: ${err.message}` });
        return;
    }
    const reply = (obj) => emit({ reply: req.id, ...obj });
    try {
        if (req.op === 'refuse') {
            refusing = Boolean(req.on);
            reply({ result: { refusing } });
            return;
        }
        const client = clients.get(req.client);
        if (!client) {
            reply({ error: `client ${req.client} is not connected`, code: 'NotConnected' });
            return;
        }
        if (req.op === 'drop') {
            await client.close(req.closeFrame === false ? { force: true } : { code: 1000, reason: 'dropped by test' });
            reply({ result: { dropped: req.client } });
            return;
        }
        const result = await client.call(req.action, req.payload || {});
        reply({ result });
    } catch (err) {
        const info = errorInfo(err);
        reply({ error: info.message, code: info.code, schemaErrors: info.schemaErrors });
    }
}

async function main() {
    const httpServer = await server.listen(port, '127.0.0.1');
    emit({ port: httpServer.address().port });
    const rl = readline.createInterface({ input: process.stdin });
    rl.on('line', (line) => {
        if (line.trim()) control(line);
    });
    rl.on('close', async () => {
        // the Python side closed stdin: shut down
        await server.close({ force: true });
        process.exit(0);
    });
}

process.on('SIGTERM', async () => {
    await server.close({ force: true });
    process.exit(0);
});

main().catch((err) => {
    process.stderr.write(`strict csms failed: ${err.stack || err}\n`);
    process.exit(1);
});
