/// <reference path="./wit/payrail.d.ts" />
/**
 * Guest SDK for payrail rule plugins written in TypeScript.
 *
 * A rule is one pure function from an {@link Input} to a {@link Decision}:
 *
 * ```ts
 * import { approve, config, decline, int, optional, rule } from '@payrail/plugin';
 *
 * const Config = { max_amount: optional(int) };
 *
 * export const evaluate = rule((input) => {
 *   const cfg = config(input, Config); // bad config -> plugin error `invalid_config`
 *   if (cfg.max_amount !== undefined && input.payment.amount > cfg.max_amount) {
 *     return decline('amount_too_large', `above ${cfg.max_amount}`);
 *   }
 *   return approve(); // or approve().posting(..).event(..).annotation(..)
 * });
 * ```
 *
 * The types are generated from `wit/payrail.wit` (`src/wit/`, by
 * `payrail-plugin types`); amounts are `bigint` (WIT `s64`). The module is
 * bundled by esbuild and made a component by componentize-js
 * (`payrail-plugin build`), with no WASI features: the component's only
 * import is `payrail:plugin/host.log`, so it has no clock, no randomness
 * source and no network by construction.
 */

import { log as hostLog } from 'payrail:plugin/host@0.1.0';
import type { Account, Approval, Decision, Entry, Event, Input, Posting } from 'payrail:plugin/types@0.1.0';

/** The contract's types: `Input`, `Decision`, `PluginError`, ... */
export type * from 'payrail:plugin/types@0.1.0';

export * from './config.ts';
import { RuleError } from './error.ts';
export { RuleError, error } from './error.ts';

/** An approval being built: chain `posting`, `event` and `annotation`. */
export class ApprovalBuilder {
  readonly postings: Posting[] = [];
  readonly events: Event[] = [];
  readonly annotations: Entry[] = [];

  /**
   * Adds a posting: a positive amount credits `account`, a negative one
   * debits it. A plugin's postings must sum to zero per currency (the host
   * checks, with the payment's own accounts and overdrafts).
   */
  posting(account: string, amount: bigint, currency: string): this {
    this.postings.push({ account, amount, currency });
    return this;
  }

  /** Adds an event published through the outbox if the payment commits.
   * A payload that is not a string is serialized with `JSON.stringify`. */
  event(topic: string, payload: string | object): this {
    const text = typeof payload === 'string' ? payload : JSON.stringify(payload);
    this.events.push({ topic, payload: text });
    return this;
  }

  /** Adds an annotation (a fact recorded with the payment). */
  annotation(key: string, value: string): this {
    this.annotations.push({ key, value });
    return this;
  }

  /** The decision this approval is. */
  decision(): Decision {
    const val: Approval = {
      postings: this.postings,
      events: this.events,
      annotations: this.annotations,
    };
    return { tag: 'approve', val };
  }
}

/** Starts an approval with no postings, events or annotations. */
export function approve(): ApprovalBuilder {
  return new ApprovalBuilder();
}

/** A decision refusing the payment with a stable snake_case `code` and a
 * human-readable `message`. Final: a retry returns the same decline. */
export function decline(code: string, message: string): Decision {
  return { tag: 'decline', val: { code, message } };
}

/** What a rule body may return. */
export type Outcome = Decision | ApprovalBuilder;

/**
 * Wraps a rule body as the component's `evaluate` export:
 * `export const evaluate = rule((input) => ...)`.
 *
 * A thrown {@link RuleError} (from {@link error} or {@link config}) becomes
 * the WIT `plugin-error`; any other exception becomes the plugin error
 * `uncaught_exception` with its message, instead of a trap without one.
 * Either is a fault: the payment is rolled back and nothing is written.
 */
export function rule(body: (input: Input) => Outcome): (input: Input) => Decision {
  return (input: Input): Decision => {
    try {
      const out = body(input);
      return out instanceof ApprovalBuilder ? out.decision() : out;
    } catch (e) {
      if (e instanceof RuleError) throw e;
      throw new RuleError('uncaught_exception', e instanceof Error ? e.message : String(e));
    }
  };
}

/** The account `id` among the input's accounts (source and destination). */
export function account(input: Input, id: string): Account | undefined {
  return input.accounts.find((a) => a.id === id);
}

/** The value of `key` in a metadata or annotation list. */
export function entry(entries: Entry[], key: string): string | undefined {
  return entries.find((e) => e.key === key)?.value;
}

/** Logging through the host (`host.log`), tagged by the host with the
 * payment and plugin; output past the per-call log cap is dropped. */
export const log = {
  debug: (message: string): void => hostLog('debug', message),
  info: (message: string): void => hostLog('info', message),
  warn: (message: string): void => hostLog('warn', message),
  error: (message: string): void => hostLog('error', message),
};
