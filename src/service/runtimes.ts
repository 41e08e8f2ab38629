// The language runtimes the service offers (languages/), in the shape it uses.
import { SpecError } from '../errors.js';
import type { LanguageRuntime } from './steps.js';
import type { RuntimeSchema } from './schemas.js';
import type * as z from 'zod/mini';

export interface RuntimeProvider {
  list(): z.output<typeof RuntimeSchema>[];
  resolve(name: string): LanguageRuntime;
}

export async function serviceRuntimes(): Promise<RuntimeProvider> {
  return {
    list: () => [],
    resolve: (name) => {
      throw new SpecError('runtime', name, 'no language runtimes are installed');
    },
  };
}
