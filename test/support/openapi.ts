// Checks HTTP answers against the service's own OpenAPI document: the document is validated
// by an OpenAPI 3.1 validator once, then each response body by the JSON Schema the document
// gives for its path, method and status (Ajv, draft 2020-12, as OpenAPI 3.1 specifies).
import { Validator } from '@seriousme/openapi-schema-validator';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

type Doc = { paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: object }> }> }>> };

export class OpenApiChecker {
  private readonly ajv = new Ajv2020({ strict: false, allErrors: false });
  private readonly compiled = new Map<string, (v: unknown) => boolean>();
  checked = 0;

  private constructor(readonly doc: Doc) {
    (addFormats as unknown as (a: Ajv2020) => void)(this.ajv);
  }

  static async load(doc: unknown): Promise<{ checker: OpenApiChecker; valid: boolean; errors: unknown }> {
    const v = await new Validator().validate(doc as Parameters<Validator['validate']>[0]);
    return { checker: new OpenApiChecker(doc as Doc), valid: v.valid, errors: v.errors };
  }

  /** Throws when `body` is not what the document promises for this answer. */
  check(method: string, url: string, status: number, body: unknown, o: { bodyless?: boolean } = {}): void {
    const path = url.split('?')[0]!;
    const template = Object.keys(this.doc.paths).find((p) => new RegExp(`^${p.replace(/\{[^}]+\}/g, '[^/]+')}$`).test(path));
    if (!template) throw new Error(`${method} ${path} is not in the OpenAPI document`);
    const op = this.doc.paths[template]![method.toLowerCase()];
    if (!op) throw new Error(`${method} ${template} is not in the OpenAPI document`);
    const resp = op.responses[String(status)] ?? op.responses.default;
    if (!resp) throw new Error(`${method} ${template} answered ${status}, which the document does not list`);
    const schema = resp.content?.['application/json']?.schema;
    this.checked++;
    if (!schema || o.bodyless) return;
    const key = `${method} ${template} ${status}`;
    let fn = this.compiled.get(key);
    if (!fn) {
      fn = this.ajv.compile(schema);
      this.compiled.set(key, fn);
    }
    if (!fn(body)) throw new Error(`${key}: the body does not match the document: ${JSON.stringify((fn as unknown as { errors: unknown }).errors)}`);
  }
}
