import type { Logger } from 'pino';
import type { Channel } from '../link/server-link.ts';

const EVERY_MS = 1000;
const LOG_EVERY_MS = 10_000;

/** Reports how far a backup is, to the server about once a second and to the log every 10 s. */
export class ProgressReporter {
  private bytesScanned = 0;
  private bytesDone = 0;
  private total: number | null = null;
  private readonly started = Date.now();
  private lastLog = Date.now();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly link: Channel,
    private readonly jobId: string,
    private readonly log: Logger,
  ) {
    this.timer = setInterval(() => this.report(), EVERY_MS);
    this.timer.unref();
  }

  setTotal(total: number | null): void {
    this.total = total;
  }

  /** Bytes read from disk. */
  scanned(bytes: number): void {
    this.bytesScanned += bytes;
    this.bytesDone += bytes;
  }

  /** Bytes covered without reading (unchanged files). */
  passed(bytes: number): void {
    this.bytesDone += bytes;
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private report(): void {
    const done = this.bytesDone;
    void this.link
      .send({
        t: 'backup.progress',
        jobId: this.jobId,
        bytesScanned: this.bytesScanned,
        bytesDone: done,
        bytesTotal: this.total,
      })
      .catch(() => {});
    if (Date.now() - this.lastLog >= LOG_EVERY_MS) {
      this.lastLog = Date.now();
      const seconds = (Date.now() - this.started) / 1000;
      const rate = done / seconds;
      const pct = this.total ? Math.min(100, (100 * done) / this.total) : undefined;
      const eta = this.total && rate > 0 ? Math.max(0, (this.total - done) / rate) : undefined;
      this.log.info(
        {
          bytesDone: done,
          bytesTotal: this.total,
          percent: pct?.toFixed(1),
          mibPerSec: (rate / 1048576).toFixed(1),
          etaSec: eta?.toFixed(0),
        },
        'backup progress',
      );
    }
  }
}
