// Fixed lookup tables of the GGUF block encodings (data from the ggml project, MIT licence;
// see grids.cpp). Grid entries pack the 8 (or 4) values of one group, one per byte, lowest
// byte = first element.
#pragma once
#include <cstdint>

namespace lowrank::quants {

// Sign bytes indexed by a 7-bit field (IQ2_XXS, IQ2_XS, IQ3_XXS): bit j set means element j
// of the 8 is negative; bit 7 is the parity bit that makes the number of negatives even.
extern const uint8_t kIqSigns[128];
// The 16 non-linear levels of IQ4_NL / IQ4_XS (signed, in units of the block scale).
extern const int8_t kIq4nlValues[16];
// E2M1 (FP4) values doubled, index = 4-bit code (bit 3 = sign): MXFP4.
extern const int8_t kMxfp4Values[16];
// IQ2_XXS: 256 points of 8 unsigned magnitudes (each 8, 25 or 43).
extern const uint64_t kIq2xxsGrid[256];
// IQ2_XS: 512 points of 8 magnitudes.
extern const uint64_t kIq2xsGrid[512];
// IQ2_S: 1024 points of 8 magnitudes.
extern const uint64_t kIq2sGrid[1024];
// IQ3_XXS: 256 points of 4 unsigned magnitudes.
extern const uint32_t kIq3xxsGrid[256];
// IQ3_S: 512 points of 4 unsigned magnitudes.
extern const uint32_t kIq3sGrid[512];
// IQ1_S / IQ1_M: 2048 points of 8 signed bytes in {-1, 0, +1}.
extern const uint64_t kIq1sGrid[2048];

}  // namespace lowrank::quants
