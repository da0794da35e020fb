// Native tests of the limits rule (run by `npm test` in Node, no host).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RuleError, type Decision } from '@payrail/plugin';
import { testInput } from '@payrail/plugin/testing';
import { evaluate } from '../src/limits.ts';

const CFG = {
  max_amount: 1000000,
  min_amount: 1,
  per_currency: { JPY: 100000 },
  allowed_currencies: ['EUR', 'USD', 'JPY'],
};

function run(amount: number, currency: string, config: object = CFG): Decision {
  return evaluate(testInput({ amount, currency, config }));
}

function declined(d: Decision): { code: string; message: string } {
  assert.equal(d.tag, 'decline', JSON.stringify(d, (_k, v) => (typeof v === 'bigint' ? `${v}` : v)));
  return d.val as { code: string; message: string };
}

test('approves within the limits, and everything with an empty config', () => {
  for (const [amount, currency] of [[1, 'EUR'], [1000000, 'EUR'], [100000, 'JPY'], [5, 'USD']] as const) {
    assert.deepEqual(run(amount, currency), { tag: 'approve', val: { postings: [], events: [], annotations: [] } });
  }
  assert.equal(evaluate(testInput({ amount: 2n ** 63n - 1n, currency: 'XXX' })).tag, 'approve');
});

test('declines a currency that is not allowed', () => {
  const d = declined(run(100, 'GBP'));
  assert.equal(d.code, 'currency_not_allowed');
  assert.equal(d.message, 'currency GBP is not allowed (allowed: EUR, USD, JPY)');
});

test('the per-currency limit wins over max_amount', () => {
  assert.equal(declined(run(1000001, 'EUR')).message, 'amount 1000001 EUR is above the limit of 1000000');
  assert.equal(declined(run(100001, 'JPY')).message, 'amount 100001 JPY is above the JPY limit of 100000');
  const cfg = { max_amount: 10, per_currency: { JPY: 1000 } };
  assert.equal(run(500, 'JPY', cfg).tag, 'approve');
  assert.equal(declined(run(11, 'EUR', cfg)).code, 'amount_too_large');
  // a currency named like an inherited property has no limit of its own
  assert.equal(declined(run(11, 'constructor', cfg)).message, 'amount 11 constructor is above the limit of 10');
});

test('declines below min_amount', () => {
  assert.equal(declined(run(0, 'EUR')).message, 'amount 0 EUR is below the minimum of 1');
});

test('a bad config is the plugin error invalid_config', () => {
  for (const cfg of ['{"max_amount": "big"}', '{"allowed_currencies": "EUR"}', '{"max_amuont": 5}', 'not json', '[1]', '{"max_amount": 1.5}', '{"max_amount": 9007199254740993}']) {
    assert.throws(
      () => evaluate(testInput({ config: cfg })),
      (e: unknown) => e instanceof RuleError && e.payload.code === 'invalid_config',
      cfg,
    );
  }
});
