// How a test's output is compared with what was expected. The built-in checkers are pure
// functions; a custom checker is a program, run sandboxed like the submission (judge.ts).

export interface CheckOutcome {
  accepted: boolean;
  message: string | null;
}

const lines = (s: string): string[] => {
  const ls = s.split('\n').map((l) => l.replace(/[ \t\r]+$/, ''));
  while (ls.length && ls[ls.length - 1] === '') ls.pop();
  return ls;
};

function firstDifference(a: string[], b: string[]): number {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return -1;
}

export function checkExact(actual: string, expected: string): CheckOutcome {
  if (actual === expected) return { accepted: true, message: null };
  const i = firstDifference(actual.split('\n'), expected.split('\n'));
  return { accepted: false, message: `output differs from the expected at line ${i + 1}` };
}

/** Trailing spaces on a line and trailing empty lines do not count, as most judges do. */
export function checkTrailingWhitespace(actual: string, expected: string): CheckOutcome {
  const i = firstDifference(lines(actual), lines(expected));
  return i < 0 ? { accepted: true, message: null } : { accepted: false, message: `line ${i + 1} differs from the expected` };
}

/**
 * Token by token; where both tokens are numbers they may differ by `epsilon`, absolute or
 * relative to the expected value (whichever is looser), as checkers of numeric problems do.
 */
export function checkFloat(actual: string, expected: string, epsilon = 1e-6): CheckOutcome {
  const a = actual.split(/\s+/).filter(Boolean);
  const e = expected.split(/\s+/).filter(Boolean);
  if (a.length !== e.length) return { accepted: false, message: `${a.length} tokens in the output, ${e.length} expected` };
  for (let i = 0; i < e.length; i++) {
    const x = Number(a[i]);
    const y = Number(e[i]);
    if (Number.isFinite(x) && Number.isFinite(y) && a[i] !== '' && e[i] !== '') {
      if (Math.abs(x - y) > epsilon * Math.max(1, Math.abs(y))) return { accepted: false, message: `token ${i + 1}: ${a[i]} is not within ${epsilon} of ${e[i]}` };
    } else if (a[i] !== e[i]) return { accepted: false, message: `token ${i + 1}: ${JSON.stringify(a[i])} where ${JSON.stringify(e[i])} was expected` };
  }
  return { accepted: true, message: null };
}

export function check(kind: 'exact' | 'trailing-whitespace' | 'float', actual: string, expected: string, epsilon?: number): CheckOutcome {
  if (kind === 'exact') return checkExact(actual, expected);
  if (kind === 'float') return checkFloat(actual, expected, epsilon);
  return checkTrailingWhitespace(actual, expected);
}
