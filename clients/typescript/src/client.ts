// The thin layer over the generated ConversationService client that every BFF would
// otherwise write itself: streams that resume where they stopped, sends that retry
// without duplicating, and errors with their ErrorInfo reason.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { randomUUID } from "node:crypto";
import {
  ConversationService,
  type Participant,
  ParticipantSchema,
  type SendMessageResponse,
  SendMessageRequestSchema,
  type StreamConversationResponse,
  type StreamInboxResponse,
} from "./gen/chat/v1/conversation_pb.js";
import { Backoff, type BackoffOptions, sleep } from "./backoff.js";
import { ChatError, isTransient } from "./errors.js";
import { createTransport, type TransportOptions } from "./transport.js";

export interface ChatClientOptions extends TransportOptions {
  backoff?: BackoffOptions;
  /** Per-attempt deadline of unary calls, in ms (default 10 s). */
  timeoutMs?: number;
  /** Attempts of send() before its last error is thrown (default 6). */
  sendAttempts?: number;
}

export interface FollowOptions {
  /** Stops the stream (the iterator then ends without an error). */
  signal?: AbortSignal;
  /** A stream that delivered nothing, heartbeats included, for this long is presumed dead
   * and reopened (default 45 s: three of the service's default 15 s heartbeats). */
  idleTimeoutMs?: number;
  /** Called before each reconnect, e.g. to log it. */
  onReconnect?: (error: ChatError, delayMs: number) => void;
  /** Yield heartbeats too (default false): they show the stream is open and, on the
   * inbox, carry a cursor to resume from. */
  heartbeats?: boolean;
}

export interface FollowConversationOptions extends FollowOptions {
  /** Deliver messages after this seq (default 0: the whole history). Pass a
   * GetConversation's head_seq to start from "now" without losing what follows. */
  afterSeq?: bigint;
}

export interface FollowInboxOptions extends FollowOptions {
  /** Resume after this cursor (the `cursor` of the last event handled). Empty means
   * from now on; until the first event arrives a reconnect starts from "now" again,
   * because the service sends no cursor before its first event. */
  cursor?: string;
}

type ParticipantInit = MessageInitShape<typeof ParticipantSchema>;
type SendInit = MessageInitShape<typeof SendMessageRequestSchema>;

/** Codes after which reopening a stream can succeed: the replica or the way to it went
 * away (UNAVAILABLE, also what a server sends when it shuts down), a proxy cut it
 * (INTERNAL, UNKNOWN: an HTTP/2 reset without a gRPC status), or the limit of open
 * streams was reached (RESOURCE_EXHAUSTED). Anything else is an answer about the
 * request itself (NOT_FOUND, PERMISSION_DENIED, OUT_OF_RANGE, ...) and ends the stream. */
function resumable(code: Code): boolean {
  return (
    isTransient(code) ||
    code === Code.Internal ||
    code === Code.Unknown ||
    code === Code.Aborted ||
    code === Code.ResourceExhausted
  );
}

export class ChatClient {
  /** The generated client, for every call this layer does not wrap. */
  readonly conversations: Client<typeof ConversationService>;
  private readonly options: ChatClientOptions;

  constructor(options: ChatClientOptions) {
    this.options = options;
    this.conversations = createClient(ConversationService, createTransport(options));
  }

  /**
   * SendMessage, retried on UNAVAILABLE and DEADLINE_EXCEEDED with the same
   * client_message_id (one is made when the request has none), so a retry of a send
   * that was written gets the original message back (created = false) instead of a
   * second one.
   */
  async send(request: SendInit, options: { signal?: AbortSignal } = {}): Promise<SendMessageResponse> {
    const req = create(SendMessageRequestSchema, request);
    if (req.clientMessageId === "") {
      req.clientMessageId = randomUUID();
    }
    const attempts = this.options.sendAttempts ?? 6;
    const backoff = new Backoff(this.options.backoff);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.conversations.sendMessage(req, {
          signal: options.signal,
          timeoutMs: this.options.timeoutMs ?? 10_000,
        });
      } catch (raw) {
        const error = ChatError.from(raw);
        if (!isTransient(error.code) || attempt >= attempts || options.signal?.aborted) {
          throw error;
        }
        await sleep(backoff.next(), options.signal);
      }
    }
  }

  /**
   * Follows one conversation: its snapshot (again after every reconnect, so a status
   * change or a linked customer missed while away is seen), then every message after
   * `afterSeq` exactly once and in seq order, across disconnects, server restarts and
   * replica changes, then read receipts, typing and status changes as they come.
   * Heartbeats keep the idle timer alive and are yielded only when asked for.
   */
  follow(
    conversationId: string,
    viewer: ParticipantInit,
    options: FollowConversationOptions = {},
  ): AsyncGenerator<StreamConversationResponse> {
    let lastSeq = options.afterSeq ?? 0n;
    const who = create(ParticipantSchema, viewer);
    return this.resuming(
      options,
      (signal) =>
        this.conversations.streamConversation(
          { conversationId, viewer: who, afterSeq: lastSeq },
          { signal },
        ),
      (event) => {
        if (event.event.case === "heartbeat") {
          return options.heartbeats ? "yield" : "skip";
        }
        if (event.event.case !== "message") {
          return "yield";
        }
        const seq = event.event.value.seq;
        if (seq <= lastSeq) {
          return "skip"; // already delivered before a reconnect
        }
        if (seq !== lastSeq + 1n) {
          // The service promises no gaps; should one ever show, reopening from the last
          // seq delivered fills it rather than passing it on.
          return "reopen";
        }
        lastSeq = seq;
        return "yield";
      },
    );
  }

  /**
   * Follows everything that touches one participant across its conversations, resuming
   * from the cursor of the last event received (heartbeats included).
   */
  followInbox(participant: ParticipantInit, options: FollowInboxOptions = {}): AsyncGenerator<StreamInboxResponse> {
    let cursor = options.cursor ?? "";
    const who: Participant = create(ParticipantSchema, participant);
    return this.resuming(
      options,
      (signal) => this.conversations.streamInbox({ participant: who, cursor }, { signal }),
      (event) => {
        // Windows after a cursor are disjoint (docs/design.md), so the cursor alone
        // prevents duplicates; it moves only once the event is handed over.
        if (event.cursor !== "") {
          cursor = event.cursor;
        }
        return event.event.case === "heartbeat" && !options.heartbeats ? "skip" : "yield";
      },
    );
  }

  /** Opens `open` again and again until `options.signal` aborts or an error that is an
   * answer (not an outage) ends it; `judge` decides each event's fate and moves the
   * resume position. */
  private async *resuming<T>(
    options: FollowOptions,
    open: (signal: AbortSignal) => AsyncIterable<T>,
    judge: (event: T) => "yield" | "skip" | "reopen",
  ): AsyncGenerator<T> {
    const backoff = new Backoff(this.options.backoff);
    const idleMs = options.idleTimeoutMs ?? 45_000;
    while (!options.signal?.aborted) {
      const attempt = new AbortController();
      const stop = () => attempt.abort();
      options.signal?.addEventListener("abort", stop, { once: true });
      let idle = setTimeout(stop, idleMs);
      let failure: unknown = new ChatError(Code.Unavailable, "stream ended", undefined, undefined, {}, []);
      try {
        for await (const event of open(attempt.signal)) {
          clearTimeout(idle);
          idle = setTimeout(stop, idleMs);
          backoff.reset();
          const verdict = judge(event);
          if (verdict === "reopen") {
            break;
          }
          if (verdict === "yield") {
            yield event;
          }
        }
        // An end without an error status (a proxy that closed it): reopen as well.
      } catch (raw) {
        failure = raw;
      } finally {
        clearTimeout(idle);
        options.signal?.removeEventListener("abort", stop);
        attempt.abort(); // the consumer stopped iterating: release the HTTP/2 stream
      }
      if (options.signal?.aborted) {
        return;
      }
      const error = ChatError.from(failure);
      // Our own idle abort surfaces as CANCELED: a dead stream, so reopen.
      if (!resumable(error.code) && error.code !== Code.Canceled) {
        throw error;
      }
      const delay = backoff.next();
      options.onReconnect?.(error, delay);
      try {
        await sleep(delay, options.signal);
      } catch {
        return;
      }
    }
  }
}
