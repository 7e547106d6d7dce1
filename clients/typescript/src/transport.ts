// The gRPC transport from options: TLS (with a client certificate for mutual TLS) and a
// bearer token for meshes that terminate TLS, as docs/design.md#trust describes.
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

export interface TlsOptions {
  /** PEM of the CA that signed the server's certificate (default: the system's). */
  ca?: string | Buffer;
  /** PEM client certificate and key, for mutual TLS. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** The name to check the server's certificate against, when the URL's host differs. */
  serverName?: string;
}

export interface TransportOptions {
  /** http://host:port (plaintext) or https://host:port (TLS). */
  baseUrl: string;
  tls?: TlsOptions;
  /** Sent as `authorization: Bearer …` on every call; a function is asked each call, so
   * a rotated token is picked up without a new client. */
  bearerToken?: string | (() => string | Promise<string>);
  /** HTTP/2 PING interval: a connection to a replica that vanished without closing it
   * (a host gone, a partition) is noticed within about twice this (default 10 s). */
  pingIntervalMs?: number;
  /** Run before the bearer token's, e.g. for tracing headers. */
  interceptors?: Interceptor[];
}

export function createTransport(options: TransportOptions): Transport {
  const url = new URL(options.baseUrl);
  if (options.tls && url.protocol !== "https:") {
    // Never fall back to plaintext when TLS was asked for.
    throw new Error(`tls options need an https:// baseUrl, got ${options.baseUrl}`);
  }
  const interceptors: Interceptor[] = [...(options.interceptors ?? [])];
  const token = options.bearerToken;
  if (token !== undefined) {
    interceptors.push((next) => async (req) => {
      const value = typeof token === "function" ? await token() : token;
      req.header.set("authorization", `Bearer ${value}`);
      return next(req);
    });
  }
  const tls = options.tls;
  return createGrpcTransport({
    baseUrl: options.baseUrl,
    interceptors,
    pingIntervalMs: options.pingIntervalMs ?? 10_000,
    pingTimeoutMs: options.pingIntervalMs ?? 10_000,
    nodeOptions: tls
      ? { ca: tls.ca, cert: tls.cert, key: tls.key, servername: tls.serverName }
      : undefined,
  });
}
