// A grouphook webhook receiver (Express).
//
//   npm ci                                   # express, cors, standardwebhooks (crypto is built into Node)
//   WEBHOOK_SECRET='whsec_…' node webhook_example.js
//
// Every callback is verified twice, over the RAW body bytes (never over
// re-serialised JSON):
//   1. x-hashed-key: lowercase hex HMAC-SHA256 of the body, keyed with the
//      endpoint's secret_key, compared with crypto.timingSafeEqual;
//   2. the Standard Webhooks headers (webhook-id, webhook-timestamp,
//      webhook-signature) with the standardwebhooks package, which also
//      rejects a timestamp more than 5 minutes away from now (replays).
//
// Secrets: grouphook signs webhook-signature with the base64-decoded rest of
// a secret that starts with "whsec_" (the Standard Webhooks convention), and
// with the secret's UTF-8 bytes otherwise. new Webhook(secret) expects the
// whsec_/base64 form, so a plain secret is passed as raw UTF-8 bytes.
//
// Settings (environment): WEBHOOK_SECRET (required), PORT (default 3000; 0
// picks a free one), HOST (default: every interface), WEBHOOK_PATH
// (default /webhook).
//
// It prints one line per request: "accepted <EVENT> <id> <group JSON>" or
// "rejected <reason>", and "listening on http://<host>:<port><path>" once.

'use strict';

const crypto = require('crypto');
const express = require('express');
const cors = require('cors');
const { Webhook } = require('standardwebhooks');

const SECRET = process.env.WEBHOOK_SECRET;
if (!SECRET) {
  console.error('WEBHOOK_SECRET is not set: set it to the endpoint\'s secret_key');
  process.exit(2);
}
const PORT = Number(process.env.PORT ?? 3000);
const HOST = process.env.HOST || undefined;
const PATH = process.env.WEBHOOK_PATH || '/webhook';

const standard = SECRET.startsWith('whsec_')
  ? new Webhook(SECRET)
  : new Webhook(Buffer.from(SECRET, 'utf8'), { format: 'raw' });

// Duplicates (the same webhook-id after a retry or a restart) are answered
// 2xx and not processed twice; a real receiver keeps this in its database.
const seen = new Set();
const MAX_SEEN = 10000;

function validHashedKey(body, header) {
  const expected = crypto.createHmac('sha256', SECRET).update(body).digest('hex');
  const got = String(header || '');
  return got.length === expected.length &&
    crypto.timingSafeEqual(Buffer.from(got), Buffer.from(expected));
}

function reject(res, status, reason) {
  console.log(`rejected ${reason}`);
  res.status(status).json({ error: reason });
}

const app = express();
// CORS is for browsers; grouphook does not need it, but the original brief's
// setup installs it, so this shows where it would go.
app.use(cors());

app.post(PATH, express.raw({ type: 'application/json', limit: '1mb' }), (req, res) => {
  if (!Buffer.isBuffer(req.body)) {
    return reject(res, 415, 'content-type must be application/json');
  }
  if (!validHashedKey(req.body, req.get('x-hashed-key'))) {
    return reject(res, 401, 'bad x-hashed-key');
  }
  let event;
  try {
    // Checks webhook-signature and the timestamp's age, then parses.
    event = standard.verify(req.body, {
      'webhook-id': req.get('webhook-id') || '',
      'webhook-timestamp': req.get('webhook-timestamp') || '',
      'webhook-signature': req.get('webhook-signature') || '',
    });
  } catch (err) {
    return reject(res, 401, `bad Standard Webhooks signature: ${err.message}`);
  }
  if (seen.has(event.id)) {
    console.log(`duplicate ${event.event} ${event.id}`);
    return res.sendStatus(204);
  }
  if (seen.size >= MAX_SEEN) seen.clear();
  seen.add(event.id);

  // Your work goes here: event.event is CREATE, UPDATE or DELETE, event.group
  // the group's client-facing fields, event.previous (UPDATE) the old values.
  console.log(`accepted ${event.event} ${event.id} ${JSON.stringify(event.group ?? null)}`);
  res.sendStatus(204);
});

const server = app.listen(PORT, HOST, () => {
  const a = server.address();
  const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  console.log(`listening on http://${host}:${a.port}${PATH}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0)); // finishes requests in progress
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 5000).unref();
  });
}
