export { BridgeNetwork, DEFAULT_BRIDGE, macFor, parseSubnet } from './bridge.js';
export type { Attachment, BridgeConfig } from './bridge.js';
export { ifbName, netnsName, tapName, vethName } from './names.js';
export { applyRate, describeShaping, hostInterface, type ShapedInterface } from './shaping.js';
