import type { RuntimeDefinition } from '../types.js';

export default {
  name: 'node',
  aliases: ['javascript', 'js', 'nodejs'],
  packages: ['nodejs'],
  fileName: 'main.js',
  run: ['node', '/box/main.js'],
  versionPackage: 'nodejs',
} satisfies RuntimeDefinition;
