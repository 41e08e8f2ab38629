import type { RuntimeDefinition } from '../types.js';

// bash is essential in debian:bookworm, so the base image serves as it is.
export default {
  name: 'shell',
  aliases: ['sh', 'bash'],
  packages: [],
  fileName: 'main.sh',
  run: ['bash', '/box/main.sh'],
  versionPackage: 'bash',
} satisfies RuntimeDefinition;
