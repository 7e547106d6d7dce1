// Conversations and participants the tests share.
import { randomUUID } from "node:crypto";
import { type ChatClient, Role } from "../src/index.js";

export const provider = { role: Role.PROVIDER, id: "prov-ts" };

/** A conversation of `provider` with an anonymous visitor, whose participant is returned. */
export async function newConversation(client: ChatClient) {
  const sessionId = randomUUID();
  const reply = await client.conversations.createConversation({
    requestId: randomUUID(),
    providerId: provider.id,
    sessionId,
  });
  const id = reply.conversation?.conversationId;
  if (!id) {
    throw new Error("CreateConversation returned no conversation");
  }
  return { id, visitor: { role: Role.CUSTOMER, sessionId } };
}

/** Resolves when `predicate` holds, polling; fails after `ms`. */
export async function until(predicate: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Resolves with `promise`, or fails after `ms` naming `what`; the timer is cleared
 * either way, so a test's process does not linger until it fires. */
export async function within<T>(promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what()}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
