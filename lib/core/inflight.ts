/**
 * Counts the work in flight on a resource (transfers touching memory or a descriptor, operations
 * of a store), so closing it can wait for them instead of pulling memory or a descriptor out from
 * under the kernel.
 */
export class InFlight {
  private count = 0;
  private waiters: (() => void)[] = [];

  get size(): number {
    return this.count;
  }

  begin(): void {
    this.count++;
  }

  end(): void {
    this.count--;
    if (this.count === 0) {
      const waiters = this.waiters;
      this.waiters = [];
      for (const wake of waiters) wake();
    }
  }

  /** Counts `p` until it settles (either way); returns it unchanged. */
  track<T>(p: Promise<T>): Promise<T> {
    this.begin();
    const end = (): void => this.end();
    p.then(end, end);
    return p;
  }

  /** Resolves once nothing is in flight (work begun meanwhile is waited for too). */
  drained(): Promise<void> {
    if (this.count === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}
