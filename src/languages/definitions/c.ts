import type { RuntimeDefinition } from '../types.js';
import { GCC_TOOLCHAIN } from './gcc-toolchain.js';

// C11 with GNU extensions, so POSIX declarations (fileno, strdup) stay visible, as judges
// that run plain `gcc` have them. libm linked as most judges do.
export default {
  name: 'c',
  aliases: ['gcc', 'c11'],
  ...GCC_TOOLCHAIN,
  fileName: 'main.c',
  compile: ['gcc', '-std=gnu11', '-O2', '-o', '/box/main', '/box/main.c', '-lm'],
  run: ['/box/main'],
  versionPackage: 'gcc',
} satisfies RuntimeDefinition;
