export { encodeFrame, encodeJsonFrame, decodeJsonPayload, FrameDecoder, HEADER_SIZE, MAX_PAYLOAD, type Frame, type FrameType } from './protocol.js';
export {
  AgentClient,
  AgentError,
  AgentTimeoutError,
  AgentClosedError,
  type ReadyInfo,
  type SessionSpec,
  type SessionSink,
  type SessionExit,
  type AgentFailure,
} from './client.js';
