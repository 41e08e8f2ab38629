import { HybridboxError, SpecError } from '../errors.js';
import { isDebianPackageName } from '../images/bases/debian.js';
import { DEFINITIONS } from './definitions/index.js';
import { BOX_DIR, type RuntimeDefinition } from './types.js';

const NAME = /^[a-z][a-z0-9+._-]{0,31}$/;
const IMAGE_NAME = /^[a-z0-9]+(?:[._-][a-z0-9]+)*$/;

/** The image a runtime runs in: debian:bookworm itself, or it plus the runtime's packages. */
export function runtimeImageRef(def: RuntimeDefinition): string {
  return def.packages.length ? `hybridbox/runtime-${def.image ?? def.name}:bookworm` : 'debian:bookworm';
}

/**
 * Checks a set of definitions against each other: names and aliases unique, a shared image
 * with one package list, commands and file names that stay in BOX_DIR. A mistake here is
 * hybridbox's own, so it throws at the first use rather than reaching a request.
 */
export function checkDefinitions(defs: readonly RuntimeDefinition[]): Map<string, RuntimeDefinition> {
  const byName = new Map<string, RuntimeDefinition>();
  const images = new Map<string, { owner: string; packages: string }>();
  const bad = (def: RuntimeDefinition, why: string) => new HybridboxError(`runtime definition ${JSON.stringify(def.name)}: ${why}`);
  for (const def of defs) {
    for (const n of [def.name, ...def.aliases]) {
      if (!NAME.test(n)) throw bad(def, `the name ${JSON.stringify(n)} is not valid; use 1-32 lower-case letters, digits and + . _ -, starting with a letter`);
      const other = byName.get(n);
      if (other) throw bad(def, `the name ${JSON.stringify(n)} is taken by ${other.name}`);
      byName.set(n, def);
    }
    if (def.image !== undefined && !IMAGE_NAME.test(def.image)) throw bad(def, `the image name ${JSON.stringify(def.image)} is not valid; use lower-case letters and digits with . _ - between them`);
    for (const p of def.packages) if (!isDebianPackageName(p)) throw bad(def, `the package ${JSON.stringify(p)} is not a valid Debian package name`);
    const ref = runtimeImageRef(def);
    const packages = [...new Set(def.packages)].sort().join(',');
    const shared = images.get(ref);
    if (shared && shared.packages !== packages) throw bad(def, `it shares the image ${ref} with ${shared.owner} but lists other packages (${packages} against ${shared.packages})`);
    images.set(ref, { owner: def.name, packages });
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(def.fileName)) throw bad(def, `fileName ${JSON.stringify(def.fileName)} must be a plain file name (it is written to ${BOX_DIR})`);
    if (def.run.length === 0 || def.compile?.length === 0) throw bad(def, 'run and compile must be non-empty argv arrays');
    if (!isDebianPackageName(def.versionPackage)) throw bad(def, `versionPackage ${JSON.stringify(def.versionPackage)} is not a valid Debian package name`);
  }
  return byName;
}

let table: Map<string, RuntimeDefinition> | undefined;
const lookup = (): Map<string, RuntimeDefinition> => (table ??= checkDefinitions(DEFINITIONS));

/** Every runtime, in the order they are listed. */
export function runtimeDefinitions(): readonly RuntimeDefinition[] {
  lookup();
  return DEFINITIONS;
}

/** The allowed names, for error messages: `c (gcc, c11), cpp (c++, g++, cxx), ...`. */
function allowedNames(): string {
  return runtimeDefinitions()
    .map((d) => (d.aliases.length ? `${d.name} (${d.aliases.join(', ')})` : d.name))
    .join(', ');
}

/** The runtime a name or alias (any case) stands for; an unknown one is a SpecError on `runtime`. */
export function resolveRuntime(nameOrAlias: string, field = 'runtime'): RuntimeDefinition {
  const def = typeof nameOrAlias === 'string' ? lookup().get(nameOrAlias.trim().toLowerCase()) : undefined;
  if (!def) throw new SpecError(field, nameOrAlias, `use one of: ${allowedNames()}`);
  return def;
}
