export { BridgeNetwork, DEFAULT_BRIDGE, netnsName, parseSubnet } from './bridge.js';
export type { Attachment, BridgeConfig } from './bridge.js';
