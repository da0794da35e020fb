/**
 * Typed step config: a shape of fields, checked once into a typed value.
 *
 * ```ts
 * const Limits = { max_amount: optional(int), allowed: optional(list(str)) };
 * const cfg = config(input, Limits); // { max_amount?: bigint, allowed?: string[] }
 * ```
 *
 * Unknown keys are refused, as the Rust SDK's `deny_unknown_fields` does.
 * Written here rather than taken from a schema library: the checks are a
 * few lines, and a library would not read JSON integers as `bigint`.
 */

import type { Input } from 'payrail:plugin/types@0.1.0';
import { RuleError } from './error.ts';

/** A config field: checks a JSON value and returns it typed. */
export interface Field<T> {
  /** `path` names the value in error messages (`per_currency.JPY`). */
  read(value: unknown, path: string): T;
  /** An optional field may be absent (or `null`). */
  readonly optional?: boolean;
}

/** A config's shape: its fields by key. */
export type Shape = Record<string, Field<unknown>>;

/** The typed value of a shape. */
export type Typed<S extends Shape> = { [K in keyof S]: S[K] extends Field<infer T> ? T : never };

function invalid(path: string, what: string): RuleError {
  return new RuleError('invalid_config', `${path}: ${what}`);
}

/**
 * An integer, as a `bigint` (amounts are `bigint` in the input). A JSON
 * number with an integral value up to 2^53 - 1 in magnitude: JavaScript's
 * `JSON.parse` reads numbers as doubles, so a larger one is refused rather
 * than read rounded.
 */
export const int: Field<bigint> = {
  read(value, path) {
    if (typeof value !== 'number' || !Number.isInteger(value)) {
      throw invalid(path, 'must be an integer');
    }
    if (!Number.isSafeInteger(value)) {
      throw invalid(path, 'must be an integer of at most 2^53 - 1 in magnitude');
    }
    return BigInt(value);
  },
};

/** A string. */
export const str: Field<string> = {
  read(value, path) {
    if (typeof value !== 'string') throw invalid(path, 'must be a string');
    return value;
  },
};

/** A boolean. */
export const bool: Field<boolean> = {
  read(value, path) {
    if (typeof value !== 'boolean') throw invalid(path, 'must be true or false');
    return value;
  },
};

/** A field that may be absent or `null` (then `undefined`). */
export function optional<T>(field: Field<T>): Field<T | undefined> {
  return {
    optional: true,
    read: (value, path) => (value === undefined || value === null ? undefined : field.read(value, path)),
  };
}

/** A JSON array of `field`. */
export function list<T>(field: Field<T>): Field<T[]> {
  return {
    read(value, path) {
      if (!Array.isArray(value)) throw invalid(path, 'must be an array');
      return value.map((v, i) => field.read(v, `${path}[${i}]`));
    },
  };
}

/**
 * A JSON object of `field` values by key, as a `Map`: a lookup of a key
 * such as `constructor` finds nothing, as it should, instead of a property
 * every object inherits.
 */
export function map<T>(field: Field<T>): Field<Map<string, T>> {
  return {
    read(value, path) {
      const obj = asObject(value, path);
      return new Map(Object.keys(obj).map((k) => [k, field.read(obj[k], `${path}.${k}`)]));
    },
  };
}

/** A JSON object of exactly `shape`'s keys (unknown keys are refused). */
export function object<S extends Shape>(shape: S): Field<Typed<S>> {
  return {
    read(value, path) {
      const obj = asObject(value, path);
      const unknown = Object.keys(obj).filter((k) => !Object.hasOwn(shape, k));
      if (unknown.length > 0) {
        throw invalid(path, `unknown key(s): ${unknown.join(', ')}`);
      }
      const out: Record<string, unknown> = {};
      for (const [key, field] of Object.entries(shape)) {
        const present = Object.hasOwn(obj, key) && obj[key] !== undefined;
        if (!present && !field.optional) throw invalid(path, `missing key ${key}`);
        out[key] = field.read(present ? obj[key] : undefined, path === '' ? key : `${path}.${key}`);
      }
      return out as Typed<S>;
    },
  };
}

function asObject(value: unknown, path: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalid(path || 'config', 'must be a JSON object');
  }
  return value as Record<string, unknown>;
}

/**
 * Parses the step's JSON config (`input.config`) into `shape`'s typed
 * value. An empty config is `{}`. Throws the plugin error
 * `invalid_config` naming the key at fault.
 */
export function config<S extends Shape>(input: Input, shape: S): Typed<S> {
  const text = input.config.trim() === '' ? '{}' : input.config;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new RuleError('invalid_config', `config is not JSON: ${e instanceof Error ? e.message : e}`);
  }
  return object(shape).read(value, '');
}
