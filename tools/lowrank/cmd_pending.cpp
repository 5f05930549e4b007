#include "common.h"
namespace lowrank::cli {
void add_train(CLI::App&) {}
void add_merge(CLI::App&) {}
void add_export(CLI::App&) {}
void add_bench(CLI::App&) {}
}
