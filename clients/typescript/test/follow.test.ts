// follow() and followInbox() against real conversation-service replicas: a replica
// killed mid-stream (kill -9) and another started on its address, while messages keep
// being sent through a second replica; every message must arrive once, in order.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { ChatClient, type ChatError } from "../src/index.js";
import { newConversation, provider, until, within } from "./fixtures.js";
import { Database, freePort, Replica } from "./services.js";

let db: Database;
let serving: Replica; // the replica the followers talk to, killed and started again
let writer: Replica; // the replica messages are sent through, never killed

before(async () => {
  db = new Database();
  serving = new Replica(db, await freePort());
  writer = new Replica(db, await freePort());
  await serving.start();
  await writer.start();
});

after(async () => {
  await serving.kill();
  await writer.kill();
  db.drop();
});

const fast = { backoff: { initialMs: 50, maxMs: 500 } };

test("follow sees every message once and in order while its replica is killed and replaced", async () => {
  const sender = new ChatClient({ baseUrl: writer.url, ...fast });
  const follower = new ChatClient({ baseUrl: serving.url, ...fast });
  const conversation = await newConversation(sender);
  const total = 60;
  const seen: bigint[] = [];
  const bodies: string[] = [];
  const reconnects: ChatError[] = [];
  const stop = new AbortController();
  const following = (async () => {
    for await (const event of follower.follow(conversation.id, provider, {
      signal: stop.signal,
      idleTimeoutMs: 3000,
      onReconnect: (error) => reconnects.push(error),
    })) {
      if (event.event.case === "message") {
        seen.push(event.event.value.seq);
        bodies.push(event.event.value.body);
        if (seen.length === total) {
          stop.abort();
        }
      }
    }
  })();

  for (let i = 1; i <= total; i++) {
    await sender.send({ conversationId: conversation.id, sender: provider, body: `m${i}` });
    if (i === 20) {
      await until(() => seen.length >= 10, 10_000, "the first messages");
      await serving.kill();
    }
    if (i === 40) {
      await serving.start();
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  await within(following, 20_000, () => `all messages (got ${seen.length} of ${total})`);
  assert.deepEqual(seen, Array.from({ length: total }, (_, i) => BigInt(i + 1)));
  assert.deepEqual(bodies, Array.from({ length: total }, (_, i) => `m${i + 1}`));
  assert.ok(reconnects.length >= 1, "the kill must have cut the stream");
});

test("follow resumes after afterSeq and skips nothing sent while it was away", async () => {
  const client = new ChatClient({ baseUrl: writer.url, ...fast });
  const conversation = await newConversation(client);
  for (let i = 1; i <= 5; i++) {
    await client.send({ conversationId: conversation.id, sender: provider, body: `m${i}` });
  }
  const stop = new AbortController();
  const seen: bigint[] = [];
  let snapshots = 0;
  for await (const event of client.follow(conversation.id, provider, { afterSeq: 3n, signal: stop.signal })) {
    if (event.event.case === "snapshot") {
      snapshots++;
      assert.equal(event.event.value.conversation?.headSeq, 5n);
    }
    if (event.event.case === "message") {
      seen.push(event.event.value.seq);
      if (seen.length === 2) {
        stop.abort();
      }
    }
  }
  assert.equal(snapshots, 1);
  assert.deepEqual(seen, [4n, 5n]);
});

test("followInbox resumes from its cursor across a killed replica: each message and conversation once", async () => {
  const sender = new ChatClient({ baseUrl: writer.url, ...fast });
  const follower = new ChatClient({ baseUrl: serving.url, ...fast });
  // A provider of its own, so other tests' conversations stay out of this inbox.
  const owner = { role: provider.role, id: `prov-inbox-${Date.now()}` };
  const first = await sender.conversations.createConversation({
    requestId: crypto.randomUUID(),
    providerId: owner.id,
    sessionId: crypto.randomUUID(),
  });
  const firstId = first.conversation?.conversationId ?? "";
  const messages: string[] = [];
  const created: string[] = [];
  let heartbeats = 0;
  let reconnects = 0;
  const stop = new AbortController();
  const following = (async () => {
    for await (const event of follower.followInbox(owner, {
      signal: stop.signal,
      heartbeats: true,
      idleTimeoutMs: 3000,
      onReconnect: () => reconnects++,
    })) {
      switch (event.event.case) {
        case "heartbeat":
          heartbeats++;
          break;
        case "message":
          messages.push(`${event.event.value.conversationId}/${event.event.value.seq}`);
          break;
        case "conversationCreated":
          created.push(event.event.value.conversation?.conversationId ?? "");
          break;
      }
    }
  })();
  // The first heartbeat means the stream is open and has given a cursor.
  await until(() => heartbeats > 0, 10_000, "the first heartbeat");
  const sendTo = (conversationId: string, body: string) =>
    sender.send({ conversationId, sender: owner, body });
  await sendTo(firstId, "before");
  await until(() => messages.length === 1, 10_000, "the first message");
  await serving.kill();
  // While nobody serves the follower: more messages and a new conversation.
  await sendTo(firstId, "while down 1");
  const second = await sender.conversations.createConversation({
    requestId: crypto.randomUUID(),
    providerId: owner.id,
    sessionId: crypto.randomUUID(),
  });
  const secondId = second.conversation?.conversationId ?? "";
  await sendTo(secondId, "while down 2");
  await serving.start();
  await sendTo(firstId, "after");
  await until(() => messages.length >= 4, 15_000, "every message");
  // Anything sent twice would show up within a few heartbeats.
  await new Promise((resolve) => setTimeout(resolve, 1000));
  stop.abort();
  await following;
  assert.deepEqual(messages, [`${firstId}/1`, `${firstId}/2`, `${secondId}/1`, `${firstId}/3`]);
  assert.deepEqual(created, [secondId]);
  assert.ok(reconnects >= 1, "the kill must have cut the stream");
});
