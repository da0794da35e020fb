/**
 * Inputs for a rule's native tests (`payrail-plugin test`), in the style of
 * the Rust SDK's `InputBuilder`: a EUR transfer of 1000 from `alice`
 * (balance 100000) to `bob` (balance 0), with `{}` config, unless told.
 */

import type { Input, StepResult } from 'payrail:plugin/types@0.1.0';

export interface TestInput {
  id?: string;
  kind?: string;
  amount?: bigint | number;
  currency?: string;
  source?: string;
  destination?: string;
  /** Account balances by id (the source and destination; others ignored). */
  balances?: Record<string, bigint | number>;
  metadata?: Record<string, string>;
  /** The step config: JSON text, or a value serialized with JSON.stringify. */
  config?: string | object;
  previous?: StepResult[];
  nowMs?: bigint | number;
}

/** An input for a test, from the defaults above and `t`. */
export function testInput(t: TestInput = {}): Input {
  const currency = t.currency ?? 'EUR';
  const source = t.source ?? 'alice';
  const destination = t.destination ?? 'bob';
  const balances = { [source]: 100000, [destination]: 0, ...t.balances };
  const config = t.config === undefined ? '{}' : typeof t.config === 'string' ? t.config : JSON.stringify(t.config);
  return {
    payment: {
      id: t.id ?? '0190a7e2-5f3c-7b2a-9d4e-1c2b3a4d5e6f',
      kind: t.kind ?? 'transfer',
      amount: BigInt(t.amount ?? 1000),
      currency,
      source,
      destination,
      metadata: Object.entries(t.metadata ?? {}).map(([key, value]) => ({ key, value })),
    },
    accounts: [source, destination].map((id) => ({
      id,
      currency,
      balance: BigInt(balances[id] ?? 0),
      flags: {},
      metadata: [],
    })),
    config,
    previous: t.previous ?? [],
    nowMs: BigInt(t.nowMs ?? 1767225600000),
  };
}
