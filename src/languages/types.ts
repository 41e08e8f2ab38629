/** Where a runtime's source file and build output live inside the sandbox (its working directory). */
export const BOX_DIR = '/box';

/**
 * One language runtime: a small file under definitions/ (docs/RUNTIMES.md). Commands are
 * argv arrays, never shell strings, and use absolute paths under BOX_DIR.
 */
export interface RuntimeDefinition {
  /** Lower-case name a request gives (`runtime: python`). */
  name: string;
  /** Other names for it; every name and alias is unique across all runtimes. */
  aliases: string[];
  /**
   * Debian packages installed on debian:bookworm (with their hard dependencies, no
   * recommends). Empty: the runtime uses debian:bookworm itself.
   */
  packages: string[];
  /**
   * Name of the image, shared by runtimes with one toolchain (c and cpp use `gcc`); they must
   * then list the same packages. Default: the runtime's name.
   */
  image?: string;
  /** The source file's name in BOX_DIR, e.g. main.c. */
  fileName: string;
  /** Run once before `run`, when the language compiles. */
  compile?: string[];
  run: string[];
  /**
   * The Debian package whose installed version is the runtime's version, read from the
   * image's dpkg database (so it is what the image holds, never a number written here).
   */
  versionPackage: string;
}

/** What a caller (the HTTP service, `hybridbox runtimes`) is told about a runtime. */
export interface RuntimeInfo {
  name: string;
  aliases: string[];
  /** The image reference a sandbox of this runtime uses. */
  image: string;
  packages: string[];
  fileName: string;
  workdir: string;
  compile: string[] | null;
  run: string[];
  /** Upstream version (12.2.0, 3.11.2) from the image; null while the image is not built. */
  version: string | null;
  /** The full Debian version of `versionPackage` in the image (4:12.2.0-3). */
  packageVersion: string | null;
  /** Manifest digest of the image in the store; null while it is not built. */
  imageDigest: string | null;
}
