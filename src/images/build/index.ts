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
export { buildImage, BuildError } from './builder.js';
export type { BuildOptions, BuildResult, BuildStep, StepRequest, StepOutcome, StepRunner } from './builder.js';
