/**
 * At most `limit` async tasks in flight. `add` waits for a free slot, which is how a busy
 * disk slows down the frame loop (and, through the agent's window, the agent). The first
 * failure is rethrown by the next `add` or by `settle`.
 */
export class BoundedWork {
  private readonly running = new Set<Promise<void>>();
  /** Tasks handed to `add` that are still waiting for a slot. */
  private waiting = 0;
  private failure: unknown;

  constructor(private readonly limit: number) {}

  async add(task: () => Promise<void>): Promise<void> {
    this.waiting += 1;
    try {
      while (this.running.size >= this.limit) await Promise.race(this.running);
    } finally {
      this.waiting -= 1;
    }
    this.throwIfFailed();
    const p: Promise<void> = task()
      .catch((err: unknown) => {
        this.failure ??= err;
      })
      .finally(() => this.running.delete(p));
    this.running.add(p);
  }

  /** Resolves once every task given to `add` so far, waiting ones included, has finished. */
  async settle(): Promise<void> {
    while (this.running.size > 0 || this.waiting > 0) {
      if (this.running.size > 0) await Promise.all(this.running);
      else await new Promise<void>((resolve) => setImmediate(resolve));
    }
    this.throwIfFailed();
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
  }
}
