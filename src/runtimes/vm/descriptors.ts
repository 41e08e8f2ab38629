import type { HostInfo } from '../../host/types.js';
import type { BackendDescriptor } from '../descriptor.js';
import { vmLimits } from './limits.js';
import { findGuestBoot, guestBootFile } from './boot.js';

function guestNotes(host: HostInfo): Record<string, unknown> {
  const boot = findGuestBoot();
  return {
    guestKernel: boot
      ? `${boot.flavour === 'custom' ? "hybridbox's own kernel" : 'Debian cloud kernel (fallback)'} ${boot.kernelRelease} (${boot.kernel})`
      : `none built yet (${guestBootFile()}): run \`npm run setup\``,
    acceleration: host.kvm.usable ? 'KVM' : 'TCG (software emulation)',
  };
}

function vmUnavailable(host: HostInfo): string | null {
  if (!host.isRoot) return 'VM sandboxes need root on this host (tap devices on the bridge)';
  if (!host.tools.qemu) return 'QEMU is not installed (apt-get install qemu-system-x86)';
  if (!findGuestBoot()) return `no guest kernel and initramfs yet (${guestBootFile()}); run \`npm run setup\``;
  return null;
}

export const microvmDescriptor: BackendDescriptor = {
  kind: 'microvm',
  summary: 'QEMU microvm: its own guest kernel (direct boot), virtio-mmio devices, no PCI or firmware, driven over QMP',
  // Boot to the agent's READY, measured on 2-core hosts: ~0.3 s with KVM, ~1.2 s under TCG.
  traits: {
    ownKernel: true,
    hardwareIsolation: true,
    fullMachine: false,
    defaultStartupMs: { median: 400, p95: 900 },
    defaultStartupMsTcg: { median: 1300, p95: 2500 },
  },
  unavailableReason: vmUnavailable,
  hostNotes: guestNotes,
  limits: (spec, host) => vmLimits('microvm', spec, host, {}),
};

export const libvirtDescriptor: BackendDescriptor = {
  kind: 'vm',
  summary: 'full virtual machine described by libvirt domain XML (q35: PCI, ACPI, virtio devices), run by libvirtd',
  // libvirtd adds ~1 s of its own (QEMU launch, QMP set-up, cgroups) to a q35 boot.
  traits: {
    ownKernel: true,
    hardwareIsolation: true,
    fullMachine: true,
    defaultStartupMs: { median: 1500, p95: 3000 },
    defaultStartupMsTcg: { median: 4000, p95: 7000 },
  },
  unavailableReason(host: HostInfo): string | null {
    if (!host.tools.libvirtd || !host.tools.virsh) return 'libvirt is not installed (apt-get install libvirt-daemon-system libvirt-clients)';
    return vmUnavailable(host);
  },
  hostNotes: guestNotes,
  limits: (spec, host) => vmLimits('vm', spec, host, {}),
};
