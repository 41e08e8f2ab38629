// Replaced at bundle time by the package version; read from package.json under the test loader.
declare const __HYBRIDBOX_VERSION__: string | undefined;
export const VERSION: string = typeof __HYBRIDBOX_VERSION__ === 'string' ? __HYBRIDBOX_VERSION__ : '0.0.0-dev';
