import test from 'ava';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostCapabilityError } from '../src/errors.js';
import { aptCacheDir, buildDebianRootfs, debianImageConfig, hostDebianMirrors, type DebianRootfs } from '../src/images/bases/debian.js';
import { BlobStore, createLayer, type Layer } from '../src/images/oci/index.js';
import { run } from '../src/util/exec.js';

// The build needs the network (a Debian mirror) and root; the cache makes a rebuild skip
// every download, so two builds from the same mirror state take about a minute here.
const CACHE = aptCacheDir();

/** Every entry of a tree as one line (type, mode, owner, size, mtime, content hash or link target). */
function treeLines(root: string): string[] {
  const lines: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const p = join(root, r);
      const st = lstatSync(p);
      const meta = `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${st.mtimeMs / 1000}`;
      if (st.isDirectory()) {
        lines.push(`d ${r} ${meta}`);
        walk(r);
      } else if (st.isSymbolicLink()) lines.push(`l ${r} ${meta} -> ${readlinkSync(p)}`);
      else if (st.isFile()) lines.push(`f ${r} ${meta} ${createHash('sha256').update(readFileSync(p)).digest('hex')}`);
      else lines.push(`? ${r} ${meta}`);
    }
  };
  walk('');
  return lines;
}

function differences(a: string[], b: string[]): string[] {
  const sa = new Set(a);
  const sb = new Set(b);
  return [...a.filter((l) => !sb.has(l)).map((l) => `- ${l}`), ...b.filter((l) => !sa.has(l)).map((l) => `+ ${l}`)].slice(0, 20);
}

async function buildAndLayer(root: string, store: BlobStore): Promise<{ build: DebianRootfs; layer: Layer; seconds: number }> {
  const t0 = Date.now();
  const build = await buildDebianRootfs(root, { cacheDir: CACHE });
  const seconds = (Date.now() - t0) / 1000;
  const layer = await createLayer(root, { store, mtime: build.sourceDateEpoch });
  return { build, layer, seconds };
}

test.serial('debian:bookworm base: a working minbase rootfs, and a rebuild from the cache gives the same layer digest', async (t) => {
  t.timeout(15 * 60_000);
  const work = mkdtempSync(join(tmpdir(), 'hbx-debian-test-'));
  try {
    const store = new BlobStore(join(work, 'blobs'));
    const first = await buildAndLayer(join(work, 'a'), store);
    const a = join(work, 'a');
    t.log(`build 1: ${first.seconds.toFixed(1)} s, ${first.build.packages.length} packages, layer ${(first.layer.descriptor.size / 1e6).toFixed(1)} MB`);

    t.regex(readFileSync(join(a, 'etc/debian_version'), 'utf8'), /^12\./);
    for (const f of ['usr/bin/apt-get', 'usr/bin/bash', 'usr/bin/dpkg']) t.true(lstatSync(join(a, f)).isFile(), f);
    t.true(lstatSync(join(a, 'bin')).isSymbolicLink(), 'merged /usr');
    t.true(existsSync(join(a, 'bin/sh')), '/bin/sh');
    t.regex(readFileSync(join(a, 'etc/apt/sources.list'), 'utf8'), /^deb \S+ bookworm main$/m, 'apt stays usable');
    t.true(first.build.packages.some((p) => p.startsWith('apt=')));
    t.false(
      first.build.packages.some((p) => /^(usrmerge|perl)=/.test(p)),
      'no usrmerge and so no perl',
    );
    t.deepEqual(readdirSync(join(a, 'dev')), [], 'the runtime provides /dev');
    t.false(existsSync(join(a, 'etc/resolv.conf')), 'no copy of the host resolver config');
    t.deepEqual(
      readdirSync(join(a, 'var/lib/apt/lists')).filter((n) => n !== 'lock' && n !== 'partial'),
      [],
    );
    t.false(existsSync(join(a, 'usr/share/man/man1')), 'no manual pages');
    t.true(
      readdirSync(join(a, 'usr/share/doc/bash')).every((n) => n === 'copyright'),
      'copyright files only',
    );
    t.true(first.layer.descriptor.size < 40e6, `layer is ${first.layer.descriptor.size} bytes`);

    // A second build from the same mirror state. Should the mirror publish between the two
    // builds (the security suite does, a few times a day), the inputs differ: build again.
    let second = await buildAndLayer(join(work, 'b'), store);
    let [x, y] = [a, join(work, 'b')];
    let prev = first;
    for (let i = 0; i < 2 && second.build.inputsKey !== prev.build.inputsKey; i++) {
      const next = join(work, `c${i}`);
      [prev, second, x, y] = [second, await buildAndLayer(next, store), y, next];
    }
    t.is(second.build.inputsKey, prev.build.inputsKey, 'the mirror kept changing');
    t.log(`build 2 (cached): ${second.seconds.toFixed(1)} s`);
    const tx = treeLines(x);
    t.deepEqual(differences(tx, treeLines(y)), [], 'the two trees differ');
    t.is(second.layer.descriptor.digest, prev.layer.descriptor.digest);
    t.is(second.layer.diffId, prev.layer.diffId);

    // Across runs too (another day, another checkout): the same inputs must give the same
    // tree as recorded by an earlier run on this machine. The tree, not the layer, is
    // recorded, so that a change to the layer writer does not read as a broken base image.
    const recordDir = join(CACHE, 'test-records');
    mkdirSync(recordDir, { recursive: true });
    const record = join(recordDir, `${second.build.inputsKey}.tree`);
    const why = 'differs from an earlier build of the same inputs (if the recipe changed on purpose, bump RECIPE_VERSION in src/images/bases/debian.ts)';
    if (existsSync(record)) t.deepEqual(differences(readFileSync(record, 'utf8').split('\n'), tx), [], why);
    else writeFileSync(record, tx.join('\n'));

    // It works as a container root: a private /dev, as a runtime would mount.
    const script = [
      'set -e',
      'mount -t tmpfs -o mode=755 tmpfs "$1/dev"',
      'for d in null zero urandom; do touch "$1/dev/$d"; mount --bind "/dev/$d" "$1/dev/$d"; done',
      'exec chroot "$1" /bin/bash -c \'cat /etc/debian_version; apt-get --version | head -1; id -u; echo ok | sed s/o/O/\'',
    ].join('\n');
    const r = await run('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', script, 'sh', y]);
    t.is(r.exitCode, 0, r.stderr);
    t.regex(r.stdout, /^12\.\d+\napt 2\.6\.\d+ \(amd64\)\n0\nOk$/);

    t.deepEqual(debianImageConfig().cmd, ['bash']);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});

test.serial('debian base: an unreachable mirror is a one-line error, and nothing is left behind', async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'hbx-debian-test-'));
  try {
    const target = join(work, 'rootfs');
    const err = await t.throwsAsync(buildDebianRootfs(target, { mirror: 'http://127.0.0.1:9/debian', cacheDir: false }), { instanceOf: HostCapabilityError });
    t.notRegex(err!.message, /\n/);
    t.regex(err!.message, /127\.0\.0\.1:9\/debian is unreachable/);
    t.false(existsSync(target));
    t.log(err!.message);

    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      await t.throwsAsync(buildDebianRootfs(target, { cacheDir: false }), {
        instanceOf: HostCapabilityError,
        message: 'mmdebstrap is missing; install it with `apt-get install mmdebstrap`',
      });
    } finally {
      process.env.PATH = path;
    }

    const bad = await t.throwsAsync(buildDebianRootfs(target, { mirror: 'not a url' }), { instanceOf: HostCapabilityError });
    t.regex(bad!.message, /^mirror "not a url" is not a valid URL/);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});

test.serial('debian base: the host mirrors come from one-line and deb822 apt sources', (t) => {
  const etc = mkdtempSync(join(tmpdir(), 'hbx-debian-apt-'));
  try {
    mkdirSync(join(etc, 'sources.list.d'));
    writeFileSync(join(etc, 'sources.list'), '# deb http://old.example/debian bookworm main\ndeb [arch=amd64] http://mirror.example/debian/ bookworm main\n');
    writeFileSync(
      join(etc, 'sources.list.d', 'debian.sources'),
      'Types: deb\nURIs: http://other.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n' +
        'Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n',
    );
    writeFileSync(join(etc, 'sources.list.d', 'x.sources.disabled'), 'Types: deb\nURIs: http://no.example\nSuites: bookworm-security\n');
    t.deepEqual(hostDebianMirrors('bookworm', etc), { mirror: 'http://mirror.example/debian', securityMirror: 'http://security.example/debian-security' });
    rmSync(join(etc, 'sources.list'));
    t.deepEqual(hostDebianMirrors('bookworm', etc).mirror, 'http://other.example/debian');
    rmSync(join(etc, 'sources.list.d'), { recursive: true });
    t.deepEqual(hostDebianMirrors('bookworm', etc), {});
  } finally {
    rmSync(etc, { recursive: true, force: true });
  }
});
