/// <reference path="./interfaces/payrail-plugin-host.d.ts" />
/// <reference path="./interfaces/payrail-plugin-types.d.ts" />
declare module 'payrail:plugin/rule@0.1.0' {
  export type Input = import('payrail:plugin/types@0.1.0').Input;
  export type Decision = import('payrail:plugin/types@0.1.0').Decision;
  export type PluginError = import('payrail:plugin/types@0.1.0').PluginError;
  export type * as PayrailPluginHost010 from 'payrail:plugin/host@0.1.0'; // import payrail:plugin/host@0.1.0
  export type * as PayrailPluginTypes010 from 'payrail:plugin/types@0.1.0'; // import payrail:plugin/types@0.1.0
  /**
  * Decides one payment.
  */
  export function evaluate(input: Input): Decision;
  export type Result<T, E> = { tag: 'ok', val: T } | { tag: 'err', val: E };
}
