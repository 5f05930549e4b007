// Lookup tables of the IQ2_XXS block encoding (data from the ggml project, MIT licence).
#pragma once
#include <cstdint>

namespace lowrank {

// Sign bytes indexed by a 7-bit field: bit j set means element j of the 8 is negative.
extern const uint8_t kIq2xxsSigns[128];
// 256 grid points; entry i holds 8 magnitudes as bytes, lowest byte first (element 0).
extern const uint64_t kIq2xxsGrid[256];

}  // namespace lowrank
