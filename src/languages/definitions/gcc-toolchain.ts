// The image c and cpp share: one toolchain, one image to build and to keep.
export const GCC_TOOLCHAIN = { image: 'gcc', packages: ['gcc', 'g++', 'libc6-dev'] };
