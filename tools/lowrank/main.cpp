// lowrank: LoRA fine-tuning and inference for Hugging Face and GGUF models.
#include <cstdio>
#include <new>

#include "common.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"lowrank — LoRA training, evaluation, merging and generation for HF and GGUF models"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  using namespace lowrank::cli;
  add_tokenize(app);
  add_eval(app);
  add_generate(app);
  add_inspect(app);
  add_train(app);
  add_merge(app);
  add_export(app);
  add_bench(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  } catch (const lowrank::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "lowrank: error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr, "lowrank: error: out of memory\n");
    return 2;
  }
  return 0;
}
