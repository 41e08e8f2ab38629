import type { EnsureImageResult, Hybridbox } from '../api/index.js';
import { dpkgVersions } from '../images/bases/debian.js';
import { readImageFile } from '../images/index.js';
import { resolveRuntime, runtimeDefinitions, runtimeImageRef } from './registry.js';
import { BOX_DIR, type RuntimeDefinition, type RuntimeInfo } from './types.js';

export interface RuntimeImageResult extends EnsureImageResult {
  /** The runtimes that run in this image. */
  runtimes: string[];
  /** Wall time of making sure it exists (the build, the import from the cache, or the check). */
  ms: number;
}

/**
 * Makes the images of the named runtimes (all by default) that the store lacks, or holds
 * with another package list, and unpacks their layers. Each image is made once however many
 * runtimes share it; a build with the same inputs as an earlier one is imported from the
 * archive cache.
 */
export async function ensureRuntimeImages(hb: Hybridbox, names?: readonly string[], opts: { log?: (line: string) => void } = {}): Promise<RuntimeImageResult[]> {
  const defs = names ? names.map((n) => resolveRuntime(n)) : runtimeDefinitions();
  const byImage = new Map<string, RuntimeDefinition[]>();
  for (const d of defs) byImage.set(runtimeImageRef(d), [...(byImage.get(runtimeImageRef(d)) ?? []), d]);
  const out: RuntimeImageResult[] = [];
  for (const [ref, users] of byImage) {
    const t0 = performance.now();
    const r = await hb.images.ensureDebian(ref, users[0]!.packages, opts);
    // Unpacked now rather than by the first request (seconds for the gcc image), which also
    // makes the first listing's version read cheap.
    await hb.images.resolve(r.digest);
    out.push({ ...r, runtimes: [...new Set(users.map((u) => u.name))], ms: Math.round(performance.now() - t0) });
  }
  return out;
}

/** `4:12.2.0-3` → `12.2.0`, `18.19.0+dfsg-6~deb12u2` → `18.19.0`: the upstream release. */
export function upstreamVersion(debianVersion: string): string {
  return debianVersion
    .replace(/^\d+:/, '')
    .replace(/-[^-]*$/, '')
    .replace(/[+~].*$/, '');
}

// An image's dpkg database never changes under its digest.
const versionsByDigest = new Map<string, Map<string, string>>();

async function imageVersions(hb: Hybridbox, digest: string): Promise<Map<string, string>> {
  let versions = versionsByDigest.get(digest);
  if (!versions) {
    const image = await hb.images.resolve(digest);
    versions = dpkgVersions(readImageFile(image.layers, 'var/lib/dpkg/status') ?? '');
    versionsByDigest.set(digest, versions);
  }
  return versions;
}

async function infoOf(hb: Hybridbox, def: RuntimeDefinition): Promise<RuntimeInfo> {
  const image = runtimeImageRef(def);
  const imageDigest = hb.images.digestOf(image) ?? null;
  const packageVersion = imageDigest ? ((await imageVersions(hb, imageDigest)).get(def.versionPackage) ?? null) : null;
  return {
    name: def.name,
    aliases: [...def.aliases],
    image,
    packages: [...def.packages],
    fileName: def.fileName,
    workdir: BOX_DIR,
    compile: def.compile ? [...def.compile] : null,
    run: [...def.run],
    version: packageVersion === null ? null : upstreamVersion(packageVersion),
    packageVersion,
    imageDigest,
  };
}

/** Every runtime with its image and the version that image holds (null until it is built). */
export async function listRuntimes(hb: Hybridbox): Promise<RuntimeInfo[]> {
  const out: RuntimeInfo[] = [];
  for (const def of runtimeDefinitions()) out.push(await infoOf(hb, def));
  return out;
}

/** One runtime by name or alias (a SpecError on `runtime` for an unknown one). */
export function describeRuntime(hb: Hybridbox, nameOrAlias: string): Promise<RuntimeInfo> {
  return infoOf(hb, resolveRuntime(nameOrAlias));
}
