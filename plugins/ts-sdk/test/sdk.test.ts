// The SDK's own tests, in Node (tests/suite/ts_plugin.rs runs them with
// `payrail-plugin test` from the sample's installed project).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  account,
  approve,
  bool,
  config,
  decline,
  entry,
  error,
  int,
  list,
  map,
  object,
  optional,
  rule,
  RuleError,
  str,
} from '../src/index.ts';
import { testInput } from '../src/testing.ts';

const pluginError = (f: () => unknown): { code: string; message: string } => {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof RuleError, String(e));
    return e.payload;
  }
  assert.fail('no error');
};

test('an approval carries its postings, events and annotations in order', () => {
  const d = approve()
    .posting('alice', -120n, 'EUR')
    .posting('fees', 120n, 'EUR')
    .event('fee.charged', { amount: 120 })
    .event('fee.note', '"text"')
    .annotation('fee', '120')
    .decision();
  assert.deepEqual(d, {
    tag: 'approve',
    val: {
      postings: [
        { account: 'alice', amount: -120n, currency: 'EUR' },
        { account: 'fees', amount: 120n, currency: 'EUR' },
      ],
      events: [
        { topic: 'fee.charged', payload: '{"amount":120}' },
        { topic: 'fee.note', payload: '"text"' },
      ],
      annotations: [{ key: 'fee', value: '120' }],
    },
  });
  assert.deepEqual(decline('no', 'because'), { tag: 'decline', val: { code: 'no', message: 'because' } });
});

test('rule: a builder is its decision, an SDK error is the plugin error, any other throw is uncaught_exception', () => {
  const input = testInput();
  assert.equal(rule(() => approve())(input).tag, 'approve');
  assert.deepEqual(pluginError(() => rule(() => { throw error('no_fee_account', 'x'); })(input)), {
    code: 'no_fee_account',
    message: 'x',
  });
  assert.deepEqual(pluginError(() => rule(() => { throw new RangeError('bad'); })(input)), {
    code: 'uncaught_exception',
    message: 'bad',
  });
  assert.deepEqual(pluginError(() => rule(() => { throw 42; })(input)), {
    code: 'uncaught_exception',
    message: '42',
  });
});

test('account and entry find by id and key, and nothing else', () => {
  const input = testInput({ source: 'a', destination: 'b', balances: { a: 7 }, metadata: { order: '42' } });
  assert.equal(account(input, 'a')?.balance, 7n);
  assert.equal(account(input, 'b')?.balance, 0n);
  assert.equal(account(input, 'c'), undefined);
  assert.equal(entry(input.payment.metadata, 'order'), '42');
  assert.equal(entry(input.payment.metadata, 'constructor'), undefined);
});

test('config reads every field kind into its type', () => {
  const shape = {
    n: int,
    s: str,
    b: bool,
    l: list(int),
    m: map(str),
    o: object({ inner: optional(int) }),
    absent: optional(int),
    nulled: optional(str),
  };
  const cfg = config(
    testInput({ config: { n: -5, s: 'x', b: true, l: [1, 2], m: { EUR: 'e' }, o: {}, nulled: null } }),
    shape,
  );
  assert.equal(cfg.n, -5n);
  assert.equal(cfg.s, 'x');
  assert.equal(cfg.b, true);
  assert.deepEqual(cfg.l, [1n, 2n]);
  assert.equal(cfg.m.get('EUR'), 'e');
  assert.equal(cfg.m.get('constructor'), undefined);
  assert.deepEqual(cfg.o, { inner: undefined });
  assert.equal(cfg.absent, undefined);
  assert.equal(cfg.nulled, undefined);
  // an empty config is {}
  assert.deepEqual(config(testInput({ config: '  ' }), { a: optional(int) }), { a: undefined });
});

test('a bad config names the key at fault', () => {
  const shape = { n: int, l: optional(list(int)), o: optional(object({ inner: int })) };
  const cases: [string, string][] = [
    ['{}', 'missing key n'],
    ['{"n": 1, "x": 2}', 'unknown key(s): x'],
    ['{"n": "1"}', 'n: must be an integer'],
    ['{"n": 1.5}', 'n: must be an integer'],
    ['{"n": 9007199254740992}', 'n: must be an integer of at most 2^53 - 1'],
    ['{"n": 1, "l": [1, "2"]}', 'l[1]: must be an integer'],
    ['{"n": 1, "o": {"inner": true}}', 'o.inner: must be an integer'],
    ['{"n": 1, "o": {"inner": 1, "extra": 0}}', 'o: unknown key(s): extra'],
    ['[1]', 'config: must be a JSON object'],
    ['not json', 'config is not JSON'],
  ];
  for (const [text, says] of cases) {
    const e = pluginError(() => config(testInput({ config: text }), shape));
    assert.equal(e.code, 'invalid_config', text);
    assert.ok(e.message.includes(says), `${text}: ${e.message}`);
  }
});
