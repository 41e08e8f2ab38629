export { StateStore } from './db.js';
export type { SandboxRecord, SandboxState } from './db.js';
export { preparePrivateRoot, ensurePrivateFile, TRAVERSE_MODE } from './private.js';
