import type { Hybridbox } from '../../api/index.js';
import { describeHost } from '../host.js';
import type { BenchKind, DensityResult, HostDescription, IsolationResult, ServiceBenchResult, StartupResult } from '../../measurements/index.js';
import { headline } from './summary.js';

/** Everything the report shows: what `report --json` prints. */
export interface ReportData {
  generatedAtMs: number;
  /** The host the report was made on. */
  host: HostDescription;
  startup: StartupResult | null;
  isolation: IsolationResult | null;
  density: DensityResult | null;
  service: ServiceBenchResult | null;
  /** Plain-language findings across all results, for the top of the report. */
  summary: string[];
}

/** The newest result of each kind: this host's when there is one, else any host's (the report says so). */
export async function loadReportData(hb: Hybridbox): Promise<ReportData> {
  const host = await describeHost(hb.host);
  const results = hb.measurements;
  const latest = <K extends BenchKind>(kind: K) => results.latest(kind, host.key) ?? results.latest(kind) ?? null;
  const data: ReportData = {
    generatedAtMs: Date.now(),
    host,
    startup: latest('startup'),
    isolation: latest('isolation'),
    density: latest('density'),
    service: latest('service'),
    summary: [],
  };
  data.summary = headline(data);
  return data;
}

/** Which benchmark fills a section, for the "not measured yet" lines. */
export const BENCH_COMMAND: Record<BenchKind, string> = {
  startup: 'hybridbox bench startup',
  isolation: 'hybridbox bench isolation',
  density: 'hybridbox bench density',
  service: 'hybridbox bench service',
};
