// lowrank: LoRA fine-tuning and inference for Hugging Face and GGUF models.
#include <cblas.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "common.h"
#include "core/error.h"

namespace {

// OpenBLAS built with DYNAMIC_ARCH picks its kernel set once, when the library is loaded
// (before main), from OPENBLAS_CORETYPE or its own CPU detection; there is no API to change it
// afterwards. On a CPU with AVX-512 that this OpenBLAS does not know (e.g. 0.3.21 on Zen 5),
// detection can settle on an AVX2 (or older) kernel set that runs sgemm at about 60 % of the
// AVX-512 one. When the user has not chosen a core, re-execute this binary once with
// OPENBLAS_CORETYPE=SkylakeX so that the library loads with the AVX-512 kernels. The variable
// being set is also the loop guard (the second run sees it and goes on); if exec fails the
// process simply continues with the kernels it has. LOWRANK_NO_BLAS_REEXEC=1 disables this.
bool is_avx512_core(const char* name) {
  std::string s = name ? name : "";
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s.find("skylakex") != std::string::npos || s.find("cooperlake") != std::string::npos ||
         s.find("sapphirerapids") != std::string::npos;
}

void select_blas_core(char** argv) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("LOWRANK_NO_BLAS_REEXEC")) return;
  if (!__builtin_cpu_supports("avx512f")) return;
  const char* config = openblas_get_config();
  if (!config || !std::strstr(config, "DYNAMIC_ARCH")) return;  // kernels fixed at build time
  if (is_avx512_core(openblas_get_corename())) return;           // already the AVX-512 kernels
  if (setenv("OPENBLAS_CORETYPE", "SkylakeX", 1) != 0) return;
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE");  // exec failed: keep running with the current kernels
#else
  (void)argv;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  select_blas_core(argv);
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
  add_serve(app);
  add_convert(app);
  add_quantize(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, like every other error ("--r: Value 0 not in range [1 - 65536]").
    std::string msg = e.what();
    for (char& c : msg)
      if (c == '\n') c = ' ';
    std::fprintf(stderr, "lowrank: error: %s (see --help)\n", msg.c_str());
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
