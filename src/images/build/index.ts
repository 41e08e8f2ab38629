export { INSTRUCTIONS, SandboxfileError, parseSandboxfile } from './sandboxfile.js';
export type {
  ArgInstruction,
  CommandInstruction,
  CopyInstruction,
  EnvInstruction,
  Instruction,
  InstructionKind,
  LabelInstruction,
  ParseOptions,
  Sandboxfile,
  UserInstruction,
  WorkdirInstruction,
} from './sandboxfile.js';
