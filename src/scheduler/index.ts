export { place, type Placement } from './place.js';
export { formatPlacement } from './format.js';
