export { BridgeNetwork, DEFAULT_BRIDGE, macFor, netnsName, parseSubnet, tapName } from './bridge.js';
export type { Attachment, BridgeConfig } from './bridge.js';
