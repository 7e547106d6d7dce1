export { ChatClient, type ChatClientOptions, type FollowConversationOptions, type FollowInboxOptions, type FollowOptions } from "./client.js";
export { ChatError, DOMAIN, isTransient, type FieldViolation } from "./errors.js";
export { Backoff, type BackoffOptions } from "./backoff.js";
export { createTransport, type TlsOptions, type TransportOptions } from "./transport.js";
// The generated messages and services, for calls this layer does not wrap.
export * from "./gen/chat/v1/conversation_pb.js";
export * from "./gen/chat/v1/token_pb.js";
export * from "./gen/chat/v1/token_admin_pb.js";
export * from "./gen/chat/v1/privacy_pb.js";
export * from "./gen/chat/v1/audit_pb.js";
export { ErrorInfoSchema, BadRequestSchema, type ErrorInfo, type BadRequest } from "./gen/google/rpc/error_details_pb.js";
