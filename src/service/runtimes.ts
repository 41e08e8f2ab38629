// The language runtimes the service offers (languages/), in the shape it uses. The list is
// read once at start (it reads each image's dpkg database); an image built later shows after
// a restart, while resolving a name needs no image at all.
import type { Hybridbox } from '../api/index.js';
import { listRuntimes, resolveRuntime, runtimeImageRef } from '../languages/index.js';
import type { RuntimeSchema } from './schemas.js';
import type { LanguageRuntime } from './steps.js';
import type * as z from 'zod/mini';

export interface RuntimeProvider {
  list(): z.output<typeof RuntimeSchema>[];
  resolve(name: string): LanguageRuntime;
}

export async function serviceRuntimes(hb: Hybridbox): Promise<RuntimeProvider> {
  const infos = (await listRuntimes(hb)).filter((r) => r.version !== null);
  const listed = infos.map((r) => ({ name: r.name, version: r.version!, aliases: r.aliases, image: r.image, compile: r.compile, run: r.run, fileName: r.fileName }));
  return {
    list: () => listed,
    resolve: (name) => {
      const def = resolveRuntime(name);
      return { name: def.name, image: runtimeImageRef(def), fileName: def.fileName, compile: def.compile ?? null, run: def.run };
    },
  };
}
