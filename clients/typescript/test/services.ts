// The real services for the tests: a fresh PostgreSQL database per test and
// conversation-service replicas run from the built binary, which a test may kill -9 and
// start again on the same address (as a load balancer's address outlives a replica).
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Code } from "@connectrpc/connect";
import { ChatClient, type ChatClientOptions } from "../src/index.js";
import { sleep } from "../src/backoff.js";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");
const binary = process.env.CONVERSATION_SERVICE_BIN ?? join(repo, "target", "debug", "conversation-service");
const pgHost = process.env.PGHOST ?? "127.0.0.1";
const pgPort = process.env.PGPORT ?? "5432";
const pgUser = process.env.PGUSER ?? "postgres";

function psql(sql: string): void {
  execFileSync("psql", ["-h", pgHost, "-p", pgPort, "-U", pgUser, "-d", "postgres", "-qAtc", sql], {
    stdio: ["ignore", "ignore", "inherit"],
  });
}

/** A throwaway database, dropped by `drop()` (WITH FORCE: a killed replica's sessions). */
export class Database {
  // The prefix scripts/test.sh sweeps when a run was killed before dropping it.
  readonly name = `cs_test_client_ts_${randomUUID().replaceAll("-", "")}`;
  readonly url = `postgres://${pgUser}@${pgHost}:${pgPort}/${this.name}`;

  constructor() {
    psql(`CREATE DATABASE "${this.name}"`);
  }

  drop(): void {
    psql(`DROP DATABASE IF EXISTS "${this.name}" WITH (FORCE)`);
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** One conversation-service process. */
export class Replica {
  private child: ChildProcess | undefined;

  constructor(
    readonly database: Database,
    readonly port: number,
    private readonly extraEnv: Record<string, string> = {},
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts the process and waits until it answers a call that reaches the database. */
  async start(readyOptions: Partial<ChatClientOptions> = {}): Promise<void> {
    const child = spawn(binary, [], {
      env: {
        ...process.env,
        LISTEN_ADDR: `127.0.0.1:${this.port}`,
        DATABASE_URL: this.database.url,
        // Idle streams show they are alive every 300 ms, so the tests wait little.
        HEARTBEAT_INTERVAL: "300ms",
        SHUTDOWN_GRACE: "1s",
        RUST_LOG: process.env.RUST_LOG ?? "warn",
        ...this.extraEnv,
      },
      stdio: ["ignore", process.env.CLIENT_TEST_LOGS ? "inherit" : "ignore", "inherit"],
    });
    this.child = child;
    let spawnError: Error | undefined;
    child.once("error", (error) => {
      spawnError = error;
    });
    const probe = new ChatClient({ baseUrl: readyOptions.baseUrl ?? this.url, timeoutMs: 1000, ...readyOptions });
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (spawnError) {
        throw new Error(`cannot start ${binary} (cargo build -p conversation-service --bins): ${spawnError.message}`);
      }
      if (child.exitCode !== null) {
        throw new Error(`conversation-service exited with ${child.exitCode}`);
      }
      try {
        await probe.conversations.getConversation({ conversationId: randomUUID() }, { timeoutMs: 1000 });
        return;
      } catch (error) {
        // NOT_FOUND (or a refusal naming the request) means it is serving.
        const code = (error as { code?: Code }).code;
        if (code !== undefined && code !== Code.Unavailable && code !== Code.DeadlineExceeded) {
          return;
        }
      }
      if (Date.now() > deadline) {
        throw new Error("conversation-service did not become ready in 30 s");
      }
      await sleep(100);
    }
  }

  /** kill -9: no goodbye to its streams, as when a host or a pod dies. */
  async kill(): Promise<void> {
    await this.stop("SIGKILL");
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      return;
    }
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill(signal);
    await exited;
  }
}
