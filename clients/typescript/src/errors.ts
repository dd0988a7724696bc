// Typed errors: every error answer of the API becomes a MeteringError carrying its code (never a
// bare status); `limit_reached` on `POST /usage/track` is a LimitReachedError with the usage.

import type { ErrorDetail, FieldError, TrackUsage } from './types.js';

/** The API's error codes (docs/api.md, "Errors"); unknown future codes still type as string. */
export type ErrorCode =
  | 'invalid_events' | 'invalid_request' | 'malformed_json' | 'empty_batch' | 'body_read_failed'
  | 'unknown_meter' | 'unknown_customer' | 'unknown_feature' | 'feature_not_in_plan' | 'missing_api_key' | 'invalid_api_key' | 'invalid_link'
  | 'link_expired' | 'link_used' | 'insufficient_scope' | 'customer_forbidden' | 'forbidden' | 'not_found'
  | 'payload_too_large' | 'too_many_events' | 'limit_reached' | 'subscription_exists'
  | 'unknown_plan' | 'plan_not_purchasable' | 'no_subscription' | 'links_disabled'
  | 'rate_limited' | 'concurrency_limited' | 'no_contract' | 'contract_in_effect'
  | 'unknown_addon' | 'addon_not_in_plan' | 'addon_active' | 'addon_not_purchasable'
  | 'broker_unavailable' | 'overloaded' | 'quota_view_starting' | 'billing_unavailable'
  | 'billing_unreachable' | 'stripe_unavailable' | 'dependency_unavailable' | 'internal'
  // The client's own: the API could not be reached, or answered no error body.
  | 'network_error' | 'timeout' | 'unexpected_response'
  | (string & {});

/** An error answer of the metering API, or a failure to reach it. */
export class MeteringError extends Error {
  readonly code: ErrorCode;
  /** HTTP status; 0 when the API was not reached. */
  readonly status: number;
  readonly requestId?: string;
  readonly details: FieldError[];
  /** `Retry-After` in seconds, when sent (503s). */
  readonly retryAfter?: number;
  constructor(status: number, detail: ErrorDetail, retryAfter?: number) {
    super(`${detail.code}: ${detail.message}`);
    this.name = 'MeteringError';
    this.code = detail.code;
    this.status = status;
    this.requestId = detail.request_id;
    this.details = detail.details ?? [];
    this.retryAfter = retryAfter;
  }
  /** Whether trying again later may succeed (unreachable, 5xx, `overloaded`, `rate_limited`,
   * `concurrency_limited`: wait `retryAfter` seconds). */
  get retryable(): boolean {
    return this.status === 0 || this.status >= 500
      || ['overloaded', 'rate_limited', 'concurrency_limited'].includes(this.code);
  }
}

/** 429 `limit_reached` of `POST /usage/track`: nothing was recorded; `usage` is the usage. */
export class LimitReachedError extends MeteringError {
  readonly usage?: TrackUsage;
  constructor(status: number, detail: ErrorDetail, usage?: TrackUsage) {
    super(status, detail);
    this.name = 'LimitReachedError';
    this.usage = usage;
  }
}
