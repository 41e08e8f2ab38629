export { StateStore } from './db.js';
export type { SandboxRecord, SandboxState } from './db.js';
