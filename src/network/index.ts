export { BridgeNetwork, DEFAULT_BRIDGE, macFor, netnsName, parseSubnet, tapName, vethName } from './bridge.js';
export type { Attachment, BridgeConfig } from './bridge.js';
export { describeShaping, hostInterface, ifbName, type ShapedInterface } from './shaping.js';
