// Drives Cairn's KurrentDB-compatible facade with the real Node client
// `@kurrent/kurrentdb-client` (npm; its reads go through the client's Rust
// bridge): appends (single and BatchAppend), wrong expected versions, $all
// reads with filters both ways, stream and $all subscriptions, metadata,
// delete and tombstone.
//
// Usage: node test_kurrent.cjs CONNECTION_STRING (the package found through
// NODE_PATH). Prints one line per check and a final
// `node kurrent client: N passed, M failed`; exits non-zero on a failure.
"use strict";
const {
  KurrentDBClient, jsonEvent, NO_STREAM, START, END, BACKWARDS, eventTypeFilter,
  WrongExpectedVersionError, StreamNotFoundError, StreamDeletedError,
} = require("@kurrent/kurrentdb-client");
const { randomUUID } = require("node:crypto");

async function main() {

  const client = KurrentDBClient.connectionString(process.argv[2]);
  let passed = 0, failed = 0;
  async function check(name, fn) {
    try { await fn(); passed++; console.log("ok   " + name); }
    catch (e) { failed++; console.log("FAIL " + name + "\n" + (e && e.stack || e)); }
}
function assert(cond, msg) { if (!cond) throw new Error("assertion failed: " + msg); }
async function collect(iter) { const out = []; for await (const x of iter) out.push(x); return out; }
const ev = (type, data) => jsonEvent({ type, data });

await check("append and read a stream", async () => {
  const s = "node-" + randomUUID();
  const r1 = await client.appendToStream(s, ev("A", { i: 0 }), { streamState: NO_STREAM });
  assert(r1.success && r1.nextExpectedRevision === 0n, JSON.stringify(r1, (k, v) => typeof v === "bigint" ? v.toString() : v));
  const r2 = await client.appendToStream(s, [ev("B", { i: 1 }), ev("C", { i: 2 })], { streamState: 0n });
  assert(r2.nextExpectedRevision === 2n, "rev 2");
  assert(r2.position.commit > r1.position.commit, "positions grow");
  const events = await collect(client.readStream(s));
  assert(events.map(e => e.event.type).join() === "A,B,C", "types");
  assert(events[1].event.data.i === 1, "json data");
  const back = await collect(client.readStream(s, { direction: BACKWARDS, fromRevision: END, maxCount: 2 }));
  assert(back.map(e => e.event.revision).join() === "2,1", "backwards");
});

await check("wrong expected version", async () => {
  const s = "node-" + randomUUID();
  await client.appendToStream(s, ev("A", {}), { streamState: NO_STREAM });
  try { await client.appendToStream(s, ev("A", {}), { streamState: NO_STREAM }); throw new Error("no error"); }
  catch (e) { assert(e instanceof WrongExpectedVersionError, "got " + e); }
  try { await client.appendToStream(s, [ev("A", {}), ev("B", {})], { streamState: 5n }); throw new Error("no error"); }
  catch (e) { assert(e instanceof WrongExpectedVersionError, "batch got " + e); }
});

await check("read $all with a filter, both ways", async () => {
  const type = "NodeT" + randomUUID().slice(0, 8);
  const s = "node-" + randomUUID();
  await client.appendToStream(s, [ev(type, {}), ev(type, {}), ev("Other", {})], { streamState: NO_STREAM });
  const f = await collect(client.readAll({ filter: eventTypeFilter({ prefixes: [type] }) }));
  assert(f.length === 2, "forwards " + f.length);
  const b = await collect(client.readAll({ direction: BACKWARDS, fromPosition: END, maxCount: 3 }));
  assert(b.length === 3 && b[0].event.type === "Other", "backwards");
});

await check("subscribe to a stream and to $all", async () => {
  const s = "node-" + randomUUID();
  await client.appendToStream(s, [ev("A", {}), ev("B", {})], { streamState: NO_STREAM });
  const sub = client.subscribeToStream(s, { fromRevision: START });
  const seen = [];
  let caughtUp = false;
  sub.on("caughtUp", () => { caughtUp = true; });
  for await (const e of sub) { seen.push(e.event.type); if (seen.length === 2) break; }
  await sub.unsubscribe();
  assert(seen.join() === "A,B", "stream sub");
  const type = "NodeSub" + randomUUID().slice(0, 8);
  await client.appendToStream(s, [ev(type, {})], { streamState: 1n });
  const all = client.subscribeToAll({ fromPosition: START, filter: eventTypeFilter({ prefixes: [type] }) });
  for await (const e of all) { assert(e.event.type === type, "filtered"); break; }
  await all.unsubscribe();
});

await check("metadata, delete and tombstone", async () => {
  const s = "node-" + randomUUID();
  await client.appendToStream(s, [ev("A", {}), ev("B", {}), ev("C", {})], { streamState: NO_STREAM });
  await client.setStreamMetadata(s, { maxCount: 2, custom: "x" });
  const m = await client.getStreamMetadata(s);
  assert(m.metadata.maxCount === 2 && m.metadata.custom === "x", JSON.stringify(m.metadata));
  await client.deleteStream(s);
  try { await collect(client.readStream(s)); throw new Error("no error"); }
  catch (e) { assert(e instanceof StreamNotFoundError, "got " + e); }
  const t = "node-" + randomUUID();
  await client.appendToStream(t, ev("A", {}), { streamState: NO_STREAM });
  await client.tombstoneStream(t);
  try { await client.appendToStream(t, ev("A", {})); throw new Error("no error"); }
  catch (e) { assert(e instanceof StreamDeletedError, "got " + e); }
});

await client.dispose();
console.log(`node kurrent client: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
}

main().catch((error) => {
  console.log(`FAIL ${error && error.stack || error}`);
  process.exit(1);
});
