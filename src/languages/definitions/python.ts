import type { RuntimeDefinition } from '../types.js';

export default {
  name: 'python',
  aliases: ['python3', 'py'],
  packages: ['python3'],
  fileName: 'main.py',
  // -B: the image root may be read-only, and a .pyc written beside the source is no result.
  run: ['python3', '-B', '/box/main.py'],
  versionPackage: 'python3',
} satisfies RuntimeDefinition;
