// Stored measurements: benchmark results in the state database, keyed by the host they were
// measured on. Below the API: the scheduler's predictions read them, `hybridbox bench` writes
// them, and neither needs the other's code.
export { Measurements, type StartupMeasure } from './results.js';
export { hostKey } from './host-key.js';
export type * from './types.js';
