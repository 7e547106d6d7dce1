// Exponential backoff with full jitter (each delay uniform in [0, min(max, initial·2^n)]):
// after a replica dies every client it served reconnects, and jitter keeps them from
// arriving at the survivors all in the same instant.

export interface BackoffOptions {
  /** First ceiling, in ms (default 100). */
  initialMs?: number;
  /** Largest ceiling, in ms (default 5000). */
  maxMs?: number;
}

export class Backoff {
  private attempt = 0;
  private readonly initialMs: number;
  private readonly maxMs: number;

  constructor(options: BackoffOptions = {}) {
    this.initialMs = options.initialMs ?? 100;
    this.maxMs = options.maxMs ?? 5000;
  }

  /** The next delay; each call doubles the ceiling up to maxMs. */
  next(): number {
    const ceiling = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.attempt, 30));
    this.attempt += 1;
    return Math.random() * ceiling;
  }

  /** After progress (an event received), the next failure starts small again. */
  reset(): void {
    this.attempt = 0;
  }
}

/** Resolves after `ms`, or rejects as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
