import test from 'ava';
import * as hybridbox from '../src/index.js';

// Every failure a caller can handle has its own class, exported from the package entry, and
// says in one line what to do.
const NAMES = [
  'SpecError',
  'ImageNotFoundError',
  'ImageInUseError',
  'ImageStoreBusyError',
  'SandboxNotFoundError',
  'AmbiguousReferenceError',
  'NameConflictError',
  'SandboxStateError',
  'PlacementError',
  'BackendUnavailableError',
  'HostCapabilityError',
  'TimeoutError',
  'BootTimeoutError',
  'AbortedError',
  'StateStoreError',
  'InsecureFileError',
  'RuntimeError',
  'SandboxfileError',
  'BuildError',
  'ArchiveError',
  'RegistryError',
  'RegistryAuthError',
  'BucketNotFoundError',
  'DigestMismatchError',
  'AgentError',
  'AgentTimeoutError',
  'AgentClosedError',
] as const;

test('each error class is exported and is a HybridboxError', (t) => {
  const entry = hybridbox as unknown as Record<string, unknown>;
  for (const name of NAMES) {
    const C = entry[name] as (new (...a: never[]) => Error) | undefined;
    t.is(typeof C, 'function', `${name} is exported`);
    t.true(C!.prototype instanceof hybridbox.HybridboxError, `${name} extends HybridboxError`);
  }
  t.false('HostError' in entry, 'no catch-all HostError');
  t.false('StateError' in entry, 'no catch-all StateError');
});

test('messages are one line and name the fix', (t) => {
  const samples = [
    new hybridbox.ImageInUseError('busybox:latest', ['a', 'b']),
    new hybridbox.AmbiguousReferenceError('ab', ['abc (x)', 'abd (y)']),
    new hybridbox.BackendUnavailableError('vm', 'libvirt is not installed (apt-get install libvirt-daemon-system)'),
    new hybridbox.InsecureFileError('/var/lib/hybridbox/registry.json', 0o644),
    new hybridbox.SpecError('env', 'X', 'give KEY=VALUE'),
  ];
  for (const e of samples) {
    t.false(e.message.includes('\n'), e.message);
    t.is(e.exitCode, 125);
    t.is(e.name, e.constructor.name);
  }
  t.regex(samples[0]!.message, /remove them first, or use `hybridbox image rm -f`/);
  t.regex(samples[3]!.message, /chmod 600 \/var\/lib\/hybridbox\/registry.json/);
  t.true(samples[2] instanceof hybridbox.PlacementError);
});
