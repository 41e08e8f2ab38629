// The language runtimes the service offers (languages/), in the shape it uses.
import { SpecError } from '../errors.js';
import type { ServiceOptions } from '../service/index.js';

export async function serviceRuntimes(): Promise<ServiceOptions['runtimes']> {
  return {
    list: () => [],
    resolve: (name) => {
      throw new SpecError('runtime', name, 'no language runtimes are installed');
    },
  };
}
