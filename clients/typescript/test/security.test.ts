// TLS, client certificates and bearer tokens from the client's options, against a
// service that checks its callers (config/callers.example.toml).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { ChatClient, type ChatClientOptions, ChatError } from "../src/index.js";
import { newConversation, provider } from "./fixtures.js";
import { type Pair, Pki } from "./pki.js";
import { Database, freePort, Replica } from "./services.js";

const callersFile = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..", "config", "callers.example.toml");
// The example file's mesh-bff token (only its hash is in the file).
const meshToken = "example-bff-token-change-me";

let db: Database;
let pki: Pki;
let secure: Replica; // TLS, client certificates required
let mesh: Replica; // plaintext behind a "mesh": bearer tokens

before(async () => {
  db = new Database();
  pki = new Pki();
  const server = pki.server("server");
  secure = new Replica(db, await freePort(), {
    TLS_CERT: server.cert,
    TLS_KEY: server.key,
    TLS_CLIENT_CA: pki.ca.cert,
    CALLERS_FILE: callersFile,
  });
  mesh = new Replica(db, await freePort(), { CALLERS_FILE: callersFile });
  await secure.start(tlsOptions(pki.client("token-service")));
  await mesh.start({ bearerToken: meshToken });
});

after(async () => {
  await secure.kill();
  await mesh.kill();
  db.drop();
  pki.remove();
});

function tlsOptions(identity?: Pair): ChatClientOptions {
  return {
    baseUrl: `https://127.0.0.1:${secure.port}`,
    tls: {
      ca: readFileSync(pki.ca.cert),
      cert: identity ? readFileSync(identity.cert) : undefined,
      key: identity ? readFileSync(identity.key) : undefined,
      serverName: "localhost",
    },
    sendAttempts: 2,
  };
}

test("mutual TLS: the client certificate names the caller and its grants", async () => {
  const writer = new ChatClient(tlsOptions(pki.client("token-service")));
  const conversation = await newConversation(writer);
  const bff = new ChatClient(tlsOptions(pki.client("bff")));
  const reply = await bff.send({ conversationId: conversation.id, sender: provider, body: "over mTLS" });
  assert.equal(reply.message?.seq, 1n);
  // token-service may create conversations, not send.
  await assert.rejects(
    writer.send({ conversationId: conversation.id, sender: provider, body: "not granted" }),
    (error: unknown) => error instanceof ChatError && error.code === Code.PermissionDenied && error.reason === "METHOD_NOT_GRANTED",
  );
  // Without a client certificate the handshake is refused: nothing is sent.
  const anonymous = new ChatClient(tlsOptions());
  await assert.rejects(anonymous.send({ conversationId: conversation.id, sender: provider, body: "x" }), ChatError);
});

test("a bearer token from the options (a string or a function) identifies the caller", async () => {
  const conversation = await newConversation(new ChatClient(tlsOptions(pki.client("token-service"))));
  let asked = 0;
  const withToken = new ChatClient({
    baseUrl: mesh.url,
    bearerToken: () => {
      asked++;
      return meshToken;
    },
  });
  const reply = await withToken.send({ conversationId: conversation.id, sender: provider, body: "with a token" });
  assert.equal(reply.message?.seq, 1n);
  assert.equal(asked, 1);
  const without = new ChatClient({ baseUrl: mesh.url });
  await assert.rejects(
    without.send({ conversationId: conversation.id, sender: provider, body: "no token" }),
    (error: unknown) => error instanceof ChatError && error.code === Code.Unauthenticated && error.reason === "CREDENTIALS_REQUIRED",
  );
  const wrong = new ChatClient({ baseUrl: mesh.url, bearerToken: "not-the-token" });
  await assert.rejects(
    wrong.send({ conversationId: conversation.id, sender: provider, body: "wrong token" }),
    (error: unknown) => error instanceof ChatError && error.reason === "UNKNOWN_TOKEN",
  );
});

test("TLS options with a plaintext URL are refused rather than sent in the clear", () => {
  assert.throws(() => new ChatClient({ baseUrl: mesh.url, tls: { ca: readFileSync(pki.ca.cert) } }), /https/);
});
