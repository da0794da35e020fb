declare module 'payrail:plugin/types@0.1.0' {
  /**
   * A key/value pair (payment or account metadata, annotations).
   */
  export interface Entry {
    key: string,
    value: string,
  }
  /**
   * The payment being decided.
   */
  export interface Payment {
    /**
     * Host-assigned id, stable across retries of the same idempotency key.
     */
    id: string,
    /**
     * The payment kind; it selects the pipeline (e.g. "transfer").
     */
    kind: string,
    /**
     * Positive amount in minor units.
     */
    amount: bigint,
    /**
     * ISO 4217 code, upper case.
     */
    currency: string,
    /**
     * Account debited by `amount`.
     */
    source: string,
    /**
     * Account credited by `amount`.
     */
    destination: string,
    metadata: Array<Entry>,
  }
  export interface AccountFlags {
    /**
     * The account may go below zero.
     */
    allowNegative?: boolean,
  }
  /**
   * An account as it stood when the pipeline started (read under its lock).
   */
  export interface Account {
    id: string,
    currency: string,
    /**
     * Balance in minor units.
     */
    balance: bigint,
    flags: AccountFlags,
    metadata: Array<Entry>,
  }
  /**
   * A proposed ledger entry. Positive `amount` credits the account,
   * negative debits it. A plugin's postings must sum to zero per currency.
   */
  export interface Posting {
    account: string,
    amount: bigint,
    currency: string,
  }
  /**
   * An event to publish through the outbox if the payment commits.
   */
  export interface Event {
    /**
     * Topic, e.g. "fee.charged".
     */
    topic: string,
    /**
     * JSON text.
     */
    payload: string,
  }
  export interface Approval {
    /**
     * Extra postings on top of the payment's own (source -amount,
     * destination +amount), e.g. a fee.
     */
    postings: Array<Posting>,
    events: Array<Event>,
    /**
     * Facts recorded with the payment (e.g. "fee" = "120").
     */
    annotations: Array<Entry>,
  }
  /**
   * A business decision to refuse the payment. It is final: a retry with the
   * same idempotency key returns the same decline.
   */
  export interface Decline {
    /**
     * Stable machine-readable code, snake_case (e.g. "amount_too_large").
     */
    code: string,
    /**
     * Human-readable explanation.
     */
    message: string,
  }
  export type Decision = DecisionApprove | DecisionDecline;
  export interface DecisionApprove {
    tag: 'approve',
    val: Approval,
  }
  export interface DecisionDecline {
    tag: 'decline',
    val: Decline,
  }
  /**
   * What an earlier step of the pipeline decided (only approvals reach
   * later steps: a decline ends the pipeline).
   */
  export interface StepResult {
    /**
     * The step's plugin name.
     */
    plugin: string,
    /**
     * Hex sha256 of the step's plugin component.
     */
    digest: string,
    decision: Decision,
  }
  /**
   * Everything a plugin call may depend on.
   */
  export interface Input {
    payment: Payment,
    /**
     * Source and destination accounts.
     */
    accounts: Array<Account>,
    /**
     * The step's config from the pipeline, as JSON text ("{}" if none).
     */
    config: string,
    /**
     * Results of earlier steps, in pipeline order.
     */
    previous: Array<StepResult>,
    /**
     * Host-supplied time, milliseconds since the Unix epoch. The only
     * clock a plugin has; it is journaled, so replay sees the same value.
     */
    nowMs: bigint,
  }
  /**
   * The plugin could not decide (bad config, unexpected input). Unlike a
   * decline this is a fault: the payment is rolled back, nothing is written.
   */
  export interface PluginError {
    code: string,
    message: string,
  }
}
