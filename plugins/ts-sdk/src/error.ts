import type { PluginError } from 'payrail:plugin/types@0.1.0';

/**
 * The plugin could not decide (bad config, unexpected input): the WIT
 * `plugin-error`. Throw it from a rule body (see `error`).
 *
 * componentize-js turns a thrown value with an own `payload` property into
 * the `err` side of the export's `result`; this class carries the WIT
 * record there.
 */
export class RuleError extends Error {
  readonly payload: PluginError;

  constructor(code: string, message: string) {
    super(`${code}: ${message}`);
    this.payload = { code, message };
  }
}

/** A plugin error to throw: `throw error('no_fee_account', '...')`. */
export function error(code: string, message: string): RuleError {
  return new RuleError(code, message);
}
