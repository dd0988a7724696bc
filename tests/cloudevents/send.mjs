// The official CloudEvents JavaScript SDK (npm `cloudevents`) as a client of POST /v1/events: one
// event in binary mode, one in structured mode and three in the JSON batch format, each a
// CloudEvent built and serialized by the SDK. Run by the e2e test `cloudevents_sdk` with
// CE_URL (the ingest), CE_KEY (an ingest key) and CE_RUN (an id prefix); prints one JSON line per
// request and exits non-zero unless every request was accepted whole.
import { CloudEvent, CONSTANTS, HTTP } from "cloudevents";

const url = `${process.env.CE_URL}/v1/events`;
const key = process.env.CE_KEY;
const run = process.env.CE_RUN;
const schema = "https://metering.example/schemas/api_call.json";

const event = (id, subject, endpoint, quantity, extensions = {}) =>
  new CloudEvent({
    id: `${run}-${id}`,
    source: "/services/js-sdk",
    type: "api_call",
    subject,
    time: new Date().toISOString(),
    datacontenttype: "application/json",
    dataschema: schema,
    data: { endpoint, quantity },
    ...extensions,
  });

async function send(mode, message, expected) {
  const r = await fetch(url, {
    method: "POST",
    headers: { ...message.headers, authorization: `Bearer ${key}` },
    body: message.body,
  });
  const body = await r.json().catch(() => null);
  console.log(JSON.stringify({ mode, status: r.status, headers: message.headers, body }));
  return r.status === 202 && body?.accepted === expected;
}

const binary = HTTP.binary(event("bin-1", "cust_js", "analyze", 2, { region: "eu", priority: 3 }));
const structured = HTTP.structured(
  event("str-1", "cust_js", "redact", 3, { region: "us", priority: 5, urgent: true }),
);
// The SDK reads batches (HTTP.toEvent) but has no batch serializer: the batch is the JSON array of
// the SDK's own serialization of each event, sent with the SDK's batch media type.
const batch = [
  event("bat-1", "cust_js", "report", 1, { batchpos: 1 }),
  event("bat-2", "cust_js2", "drill", 4, { batchpos: 2 }),
  event("bat-3", "cust_js2", "analyze", 5, { batchpos: 3 }),
];
const batched = {
  headers: { "content-type": CONSTANTS.MIME_CE_BATCH },
  body: JSON.stringify(batch.map((e) => e.toJSON())),
};

const ok = [
  await send("binary", binary, 1),
  await send("structured", structured, 1),
  await send("batched", batched, 3),
];
process.exit(ok.every(Boolean) ? 0 : 1);
