#include "common.h"
namespace lowrank::cli {
void add_bench(CLI::App&) {}
}  // namespace lowrank::cli
