// Runs are admitted by the host's capacity, not by arrival: each holds CPU slots and memory
// (its limit plus what its backend costs beyond the workload) from start to end. A run that
// does not fit waits in a bounded FIFO, and says where it stands and why.
import type { BackendKind } from '../spec/index.js';

export interface Cost {
  cpuSlots: number;
  memoryMiB: number;
}

export interface Capacity {
  cpuSlots: number;
  memoryMiB: number;
}

/** What a backend costs beyond its workload's memory when no `bench density` has measured it here (MiB). */
export const DEFAULT_OVERHEAD_MIB: Record<BackendKind, number> = { container: 8, microvm: 64, vm: 256 };

interface Waiter {
  id: string;
  cost: Cost;
  admit: () => void;
}

export class QueueFullError extends Error {}

/**
 * A FIFO of waiting runs over a capacity budget. Head-of-line order is kept (a big run at
 * the head is not overtaken forever by small ones), which is what a judge's users expect.
 */
export class Admission {
  private used: Cost = { cpuSlots: 0, memoryMiB: 0 };
  private readonly waiting: Waiter[] = [];

  constructor(
    readonly capacity: Capacity,
    readonly maxQueued: number,
  ) {}

  /** Whether a run of this cost can ever be admitted here. */
  fitsAtAll(cost: Cost): boolean {
    return cost.cpuSlots <= this.capacity.cpuSlots && cost.memoryMiB <= this.capacity.memoryMiB;
  }

  get queued(): number {
    return this.waiting.length;
  }

  get inUse(): Cost {
    return { ...this.used };
  }

  /** 1-based place in the queue; null when not waiting. */
  position(id: string): number | null {
    const i = this.waiting.findIndex((w) => w.id === id);
    return i < 0 ? null : i + 1;
  }

  /** Why a waiting run waits, in words. */
  why(id: string): string | null {
    const i = this.waiting.findIndex((w) => w.id === id);
    if (i < 0) return null;
    const c = this.waiting[i]!.cost;
    const ahead = i > 0 ? `${i} run(s) ahead of it; ` : '';
    return `${ahead}waiting for capacity: it needs ${c.cpuSlots} CPU slot(s) and ${c.memoryMiB} MiB; in use ${this.used.cpuSlots}/${this.capacity.cpuSlots} slots, ${this.used.memoryMiB}/${this.capacity.memoryMiB} MiB`;
  }

  /** Resolves once the run holds its share; throws QueueFullError at once when the queue is full. */
  acquire(id: string, cost: Cost): Promise<void> {
    if (this.waiting.length === 0 && this.fits(cost)) {
      this.take(cost);
      return Promise.resolve();
    }
    if (this.waiting.length >= this.maxQueued) return Promise.reject(new QueueFullError(`the queue is full (${this.maxQueued} runs waiting)`));
    return new Promise((resolve) => this.waiting.push({ id, cost, admit: resolve }));
  }

  /** A waiting run that gives up (its caller went away before it started). */
  cancel(id: string): boolean {
    const i = this.waiting.findIndex((w) => w.id === id);
    if (i < 0) return false;
    this.waiting.splice(i, 1);
    this.drain();
    return true;
  }

  release(cost: Cost): void {
    this.used = { cpuSlots: this.used.cpuSlots - cost.cpuSlots, memoryMiB: this.used.memoryMiB - cost.memoryMiB };
    this.drain();
  }

  private fits(c: Cost): boolean {
    return this.used.cpuSlots + c.cpuSlots <= this.capacity.cpuSlots && this.used.memoryMiB + c.memoryMiB <= this.capacity.memoryMiB;
  }

  private take(c: Cost): void {
    this.used = { cpuSlots: this.used.cpuSlots + c.cpuSlots, memoryMiB: this.used.memoryMiB + c.memoryMiB };
  }

  private drain(): void {
    while (this.waiting.length && this.fits(this.waiting[0]!.cost)) {
      const w = this.waiting.shift()!;
      this.take(w.cost);
      w.admit();
    }
  }
}
