export { place, predictionSource, type Placement, type PredictedStartup, type StartupStats } from './place.js';
export { formatPlacement } from './format.js';
