declare module 'payrail:plugin/host@0.1.0' {
  /**
   * Writes a line to the host log, tagged with the payment and plugin.
   * Output beyond the host's per-call log cap is dropped.
   */
  export function log(level: Level, message: string): void;
  /**
   * # Variants
   * 
   * ## `"debug"`
   * 
   * ## `"info"`
   * 
   * ## `"warn"`
   * 
   * ## `"error"`
   */
  export type Level = 'debug' | 'info' | 'warn' | 'error';
}
