#!/usr/bin/env node
import { buildProgram } from './main.js';
import { reportError } from './report-error.js';

buildProgram()
  .parseAsync(process.argv)
  .catch((e: unknown) => reportError(e));
