/**
 * Limits rule: declines payments outside configured amount and currency
 * limits. The TypeScript twin of plugins/limits (Rust): the same config,
 * checks, codes and messages, held to the same fixtures
 * (plugins/limits/fixtures/).
 *
 * Config (JSON, all keys optional, amounts in minor units; unknown keys are
 * refused):
 *
 *     {"max_amount": 1000000, "min_amount": 1,
 *      "per_currency": {"JPY": 100000}, "allowed_currencies": ["EUR", "USD", "JPY"]}
 *
 * Checks, in order: `currency_not_allowed`, `amount_too_large` (the
 * currency's own limit if it has one, else `max_amount`),
 * `amount_too_small`. Otherwise it approves with no postings.
 */

import { approve, config, decline, int, list, map, optional, rule, str } from '@payrail/plugin';

const LimitsConfig = {
  max_amount: optional(int),
  min_amount: optional(int),
  per_currency: optional(map(int)),
  allowed_currencies: optional(list(str)),
};

export const evaluate = rule((input) => {
  const cfg = config(input, LimitsConfig);
  const p = input.payment;
  if (cfg.allowed_currencies !== undefined && !cfg.allowed_currencies.includes(p.currency)) {
    return decline(
      'currency_not_allowed',
      `currency ${p.currency} is not allowed (allowed: ${cfg.allowed_currencies.join(', ')})`,
    );
  }
  const perCurrency = cfg.per_currency?.get(p.currency);
  const max = perCurrency ?? cfg.max_amount;
  if (max !== undefined && p.amount > max) {
    const scope = perCurrency !== undefined ? `${p.currency} limit` : 'limit';
    return decline('amount_too_large', `amount ${p.amount} ${p.currency} is above the ${scope} of ${max}`);
  }
  if (cfg.min_amount !== undefined && p.amount < cfg.min_amount) {
    return decline('amount_too_small', `amount ${p.amount} ${p.currency} is below the minimum of ${cfg.min_amount}`);
  }
  return approve();
});
