export { place, type Placement, type StartupStats } from './place.js';
export { formatPlacement } from './format.js';
