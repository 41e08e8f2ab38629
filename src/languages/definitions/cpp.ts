import type { RuntimeDefinition } from '../types.js';
import { GCC_TOOLCHAIN } from './gcc-toolchain.js';

export default {
  name: 'cpp',
  aliases: ['c++', 'g++', 'cxx'],
  ...GCC_TOOLCHAIN,
  fileName: 'main.cpp',
  compile: ['g++', '-std=gnu++17', '-O2', '-o', '/box/main', '/box/main.cpp'],
  run: ['/box/main'],
  versionPackage: 'g++',
} satisfies RuntimeDefinition;
