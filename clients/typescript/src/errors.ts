// Typed errors: every failure of this package is a ChatError that carries the gRPC code
// and the google.rpc.ErrorInfo reason, so callers branch on `reason`, never on text.
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** The ErrorInfo domain of both services. */
export const DOMAIN = "chat.v1";

export interface FieldViolation {
  field: string;
  description: string;
}

export class ChatError extends Error {
  override readonly name = "ChatError";

  constructor(
    readonly code: Code,
    message: string,
    /** ErrorInfo.reason, e.g. CONVERSATION_CLOSED; undefined when the error has none
     * (a transport failure, or a proxy that answered instead of the service). */
    readonly reason: string | undefined,
    readonly domain: string | undefined,
    readonly metadata: Readonly<Record<string, string>>,
    /** From google.rpc.BadRequest, on INVALID_ARGUMENT. */
    readonly fieldViolations: readonly FieldViolation[],
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** The code's name as gRPC spells it (UNAVAILABLE, NOT_FOUND, ...). */
  get codeName(): string {
    return Code[this.code]
      .replace(/([a-z])([A-Z])/g, "$1_$2")
      .toUpperCase();
  }

  static from(error: unknown): ChatError {
    if (error instanceof ChatError) {
      return error;
    }
    const connect = ConnectError.from(error);
    const info = connect.findDetails(ErrorInfoSchema)[0];
    const violations = connect
      .findDetails(BadRequestSchema)
      .flatMap((bad) => bad.fieldViolations)
      .map((v) => ({ field: v.field, description: v.description }));
    return new ChatError(
      connect.code,
      connect.rawMessage,
      info?.reason || undefined,
      info?.domain || undefined,
      { ...(info?.metadata ?? {}) },
      violations,
      { cause: error },
    );
  }
}

/** Worth calling again: the service or the way to it was down, or too slow. */
export function isTransient(code: Code): boolean {
  return code === Code.Unavailable || code === Code.DeadlineExceeded;
}
