/**
 * Host-side names derived from a sandbox id, in one place so that every layer (attach,
 * shaping, clean-up, leak checks) agrees. Interface names are capped at 15 characters.
 */
export function netnsName(sandboxId: string): string {
  return `hbx-${sandboxId}`;
}
export function vethName(sandboxId: string): string {
  return `hv${sandboxId.slice(0, 12)}`;
}
export function tapName(sandboxId: string): string {
  return `ht${sandboxId.slice(0, 12)}`;
}

/** The IFB device that carries a sandbox's outgoing traffic through its shaper. */
export const ifbName = (sandboxId: string): string => `hi${sandboxId.slice(0, 12)}`;
