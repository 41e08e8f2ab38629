// Every runtime hybridbox ships. Adding one: a file beside these, and its line here
// (docs/RUNTIMES.md).
import c from './c.js';
import cpp from './cpp.js';
import node from './node.js';
import python from './python.js';
import shell from './shell.js';

export const DEFINITIONS = [shell, c, cpp, python, node];
