// follow() and send() while PostgreSQL restarts. Restarting the shared cluster would
// disrupt everyone else's tests on a developer machine, so this runs only when asked:
// CLIENT_FAULT_PG_RESTART=1, with the restart command in CLIENT_FAULT_PG_RESTART_CMD
// (default: Debian's pg_ctlcluster on the first installed version, which needs root);
// clients/test-pg-restart.sh runs it on a private cluster instead.
import assert from "node:assert/strict";
import { execSync } from "node:child_process";
import { after, before, test } from "node:test";
import { ChatClient } from "../src/index.js";
import { newConversation, provider, within } from "./fixtures.js";
import { Database, freePort, Replica } from "./services.js";

const enabled = process.env.CLIENT_FAULT_PG_RESTART === "1";
const restart =
  process.env.CLIENT_FAULT_PG_RESTART_CMD ??
  'pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main restart';

let db: Database | undefined;
let replica: Replica | undefined;

before(async () => {
  if (!enabled) {
    return;
  }
  db = new Database();
  replica = new Replica(db, await freePort());
  await replica.start();
});

after(async () => {
  await replica?.kill();
  db?.drop();
});

test(
  "follow sees every message once, in order, while PostgreSQL restarts",
  { skip: enabled ? false : "set CLIENT_FAULT_PG_RESTART=1 (restarts the shared PostgreSQL)" },
  async () => {
    const url = replica?.url ?? "";
    const client = new ChatClient({ baseUrl: url, sendAttempts: 60, backoff: { initialMs: 100, maxMs: 1000 } });
    const conversation = await newConversation(client);
    const total = 40;
    const seen: bigint[] = [];
    const stop = new AbortController();
    const following = (async () => {
      for await (const event of client.follow(conversation.id, provider, { signal: stop.signal, idleTimeoutMs: 5000 })) {
        if (event.event.case === "message") {
          seen.push(event.event.value.seq);
          if (seen.length === total) {
            stop.abort();
          }
        }
      }
    })();
    for (let i = 1; i <= total; i++) {
      if (i === 15) {
        execSync(restart, { stdio: "inherit", shell: "/bin/bash" });
      }
      // Retried through the outage with the same client_message_id.
      await client.send({ conversationId: conversation.id, sender: provider, body: `m${i}` });
    }
    await within(following, 30_000, () => `all messages (got ${seen.length} of ${total})`);
    assert.deepEqual(seen, Array.from({ length: total }, (_, i) => BigInt(i + 1)));
  },
);
