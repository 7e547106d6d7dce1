// send() retries and typed errors against a real conversation-service.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { ChatClient, ChatError, ConversationStatus, Direction } from "../src/index.js";
import { newConversation, provider } from "./fixtures.js";
import { Database, freePort, Replica } from "./services.js";

let db: Database;
let replica: Replica;

before(async () => {
  db = new Database();
  replica = new Replica(db, await freePort());
  await replica.start();
});

after(async () => {
  await replica.kill();
  db.drop();
});

const fast = { backoff: { initialMs: 50, maxMs: 300 } };

async function history(client: ChatClient, conversationId: string) {
  const page = await client.conversations.listMessages({ conversationId, viewer: provider, direction: Direction.FORWARD });
  return page.messages.map((m) => m.body);
}

test("send retries a call whose answer was lost with the same client_message_id: one message", async () => {
  // The first SendMessage reaches the service and is written, then its answer is lost,
  // as when a connection drops after the request went out.
  let calls = 0;
  const ids: string[] = [];
  const loseFirstAnswer: Interceptor = (next) => async (req) => {
    if (req.method.name !== "SendMessage") {
      return next(req);
    }
    calls++;
    ids.push(req.stream ? "" : (req.message as unknown as { clientMessageId: string }).clientMessageId);
    const res = await next(req);
    if (calls === 1) {
      throw new ConnectError("connection reset", Code.Unavailable);
    }
    return res;
  };
  const client = new ChatClient({ baseUrl: replica.url, interceptors: [loseFirstAnswer], ...fast });
  const conversation = await newConversation(client);
  const reply = await client.send({ conversationId: conversation.id, sender: provider, body: "once" });
  assert.equal(calls, 2);
  assert.equal(ids[0], ids[1]);
  assert.notEqual(ids[0], "");
  assert.equal(reply.created, false, "the retry gets the original message back");
  assert.equal(reply.message?.seq, 1n);
  assert.deepEqual(await history(client, conversation.id), ["once"]);
});

test("send waits out a replica that was killed (its connection dead) and is written once", async () => {
  const late = new Replica(db, await freePort());
  await late.start();
  const client = new ChatClient({ baseUrl: late.url, sendAttempts: 30, ...fast });
  // The conversation is made through this client, so its connection to the replica is
  // open when the replica dies.
  const conversation = await newConversation(client);
  await late.kill();
  const sending = client.send({ conversationId: conversation.id, sender: provider, body: "late", clientMessageId: "k1" });
  let settled = false;
  void sending.then(
    () => (settled = true),
    () => (settled = true),
  );
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.equal(settled, false, "still retrying while nothing listens");
  await late.start();
  try {
    const reply = await sending;
    assert.equal(reply.created, true);
    assert.equal(reply.message?.clientMessageId, "k1");
    assert.deepEqual(await history(client, conversation.id), ["late"]);
  } finally {
    await late.kill();
  }
});

test("send gives up after its attempts with a ChatError UNAVAILABLE", async () => {
  const client = new ChatClient({ baseUrl: `http://127.0.0.1:${await freePort()}`, sendAttempts: 3, ...fast });
  await assert.rejects(
    client.send({ conversationId: crypto.randomUUID(), sender: provider, body: "x" }),
    (error: unknown) => error instanceof ChatError && error.code === Code.Unavailable && error.codeName === "UNAVAILABLE",
  );
});

test("errors carry their ErrorInfo reason and are not retried", async () => {
  let calls = 0;
  const count: Interceptor = (next) => (req) => {
    calls++;
    return next(req);
  };
  const client = new ChatClient({ baseUrl: replica.url, interceptors: [count], ...fast });
  const conversation = await newConversation(client);
  await client.conversations.setConversationStatus({
    conversationId: conversation.id,
    status: ConversationStatus.CLOSED,
  });
  calls = 0;
  await assert.rejects(
    client.send({ conversationId: conversation.id, sender: provider, body: "too late" }),
    (error: unknown) =>
      error instanceof ChatError &&
      error.code === Code.FailedPrecondition &&
      error.reason === "CONVERSATION_CLOSED" &&
      error.domain === "chat.v1",
  );
  assert.equal(calls, 1, "a refusal is an answer, not an outage");
  await assert.rejects(
    client.send({ conversationId: conversation.id, sender: provider, body: "" }),
    (error: unknown) =>
      error instanceof ChatError &&
      error.code === Code.InvalidArgument &&
      error.fieldViolations.some((v) => v.field === "body"),
  );
});

test("follow of an unknown conversation ends with CONVERSATION_NOT_FOUND instead of retrying", async () => {
  const client = new ChatClient({ baseUrl: replica.url, ...fast });
  let reconnects = 0;
  const stream = client.follow(crypto.randomUUID(), provider, { onReconnect: () => reconnects++ });
  await assert.rejects(
    (async () => {
      for await (const _ of stream) {
        // nothing arrives
      }
    })(),
    (error: unknown) => error instanceof ChatError && error.code === Code.NotFound && error.reason === "CONVERSATION_NOT_FOUND",
  );
  assert.equal(reconnects, 0);
});
