// Stands in for the host's `payrail:plugin/host` when a rule's tests run
// natively in Node (`payrail-plugin test`): a log line goes to stderr.
import type { Level } from 'payrail:plugin/host@0.1.0';

export function log(level: Level, message: string): void {
  console.error(`[${level}] ${message}`);
}
