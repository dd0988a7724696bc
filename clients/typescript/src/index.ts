// The package's main entry: the client, its errors and the API's types (no React here).
export { MeteringClient } from './client.js';
export type { MeteringClientOptions } from './client.js';
export { MeteringError, LimitReachedError } from './errors.js';
export type { ErrorCode } from './errors.js';
export type * from './types.js';
export const VERSION = '0.1.0';
