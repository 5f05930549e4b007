// lowrank quantize: requantize a GGUF with llama.cpp's mixture presets.
// lowrank quant-bench: quantization error (RMSE relative to the f32 weights) and quantize /
// dequantize throughput per type, on a model's tensors or on synthetic weights.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include "common.h"
#include "core/error.h"
#include "io/gguf.h"
#include "io/gguf_quantize.h"
#include "quants/dequant.h"
#include "quants/quantize.h"

namespace lowrank::cli {

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

void check_out_path(const std::string& in, const std::string& out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(out, ec) && fs::equivalent(in, out, ec)) fail("--out ", out, " is the input model; write to another file");
  if (out.size() < 5 || out.compare(out.size() - 5, 5, ".gguf") != 0) fail("--out ", out, ": must be a .gguf file");
  fs::path parent = fs::path(out).parent_path();
  if (parent.empty()) parent = ".";
  if (!fs::is_directory(parent, ec)) fail("--out ", out, ": directory ", parent.string(), " does not exist");
  if (::access(parent.c_str(), W_OK) != 0) fail("--out ", out, ": directory ", parent.string(), " is not writable");
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- quant-bench ---------------------------------------------------------------------------

struct BenchOpts {
  std::string model;
  std::vector<std::string> tensors, types;
  int64_t rows = 1024;
  int reps = 3;
  bool json = false, uniform_imatrix = false;
};

// Block bytes for a decode-only type (no encoder): pseudo-random codes with a small f16 scale
// in front, for timing.
std::vector<uint8_t> random_blocks(DType t, int64_t n, uint32_t seed) {
  std::vector<uint8_t> b(dtype_bytes(t, n));  // n elements of blocks
  std::mt19937 rng(seed);
  for (auto& x : b) x = uint8_t(rng());
  const size_t bb = size_t(dtype_block_bytes(t));
  if (t != DType::IQ1_M)
    for (size_t at = 0; at + bb <= b.size(); at += bb) b[at] = 0x00, b[at + 1] = 0x20;  // d = 2^-7
  return b;
}

void run_quant_bench(const BenchOpts& o) {
  std::vector<DType> types;
  if (o.types.empty()) {
    for (int i = 0; i < quants::kDTypeCount; i++)
      if (dtype_is_weight(DType(i)) && DType(i) != DType::F32) types.push_back(DType(i));
  } else {
    for (const std::string& n : o.types) {
      DType t;
      if (!quants::dtype_from_name(n.c_str(), &t) || !dtype_is_weight(t)) fail("--types: unknown weight type '", n, "'");
      types.push_back(t);
    }
  }
  // The reference weights: rows of model tensors dequantized to f32, or synthetic weights.
  struct Source { std::string name; std::string dtype; int64_t rows, cols; std::vector<float> x; };
  std::vector<Source> srcs;
  if (!o.model.empty()) {
    GgufFile f = GgufFile::open(o.model);
    std::vector<std::string> names = o.tensors;
    if (names.empty()) names = {"output.weight"};
    for (const std::string& n : names) {
      Matrix m = f.matrix(n);
      const int64_t r = std::min(o.rows, m.rows);
      Source s{n, dtype_name(m.dtype), r, m.cols, std::vector<float>(size_t(r * m.cols))};  // (r, cols)
      m.rows_f32(0, r, s.x.data());
      srcs.push_back(std::move(s));
    }
  } else {
    const int64_t cols = 4096;
    Source s{"synthetic N(0, 0.02)", "F32", o.rows, cols, std::vector<float>(size_t(o.rows * cols))};  // (rows, cols)
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    for (float& v : s.x) v = nd(rng);
    srcs.push_back(std::move(s));
  }
  if (!o.json) {
    std::printf("%-24s %-8s %-8s %10s %12s %12s %10s\n", "tensor", "source", "type", "rmse_rel", "quant Mel/s",
                "dequant Mel/s", "dequant GB/s");
  }
  for (const Source& s : srcs) {
    const int64_t n = s.rows * s.cols;
    double ss = 0;
    for (float v : s.x) ss += double(v) * v;
    for (DType t : types) {
      if (s.cols % dtype_block_elems(t) != 0) continue;
      std::vector<uint8_t> q(dtype_bytes(t, n));
      std::vector<float> y(static_cast<size_t>(n));  // (rows, cols)
      double tq = -1, tdq = 1e30, rmse = -1;
      if (quants::can_quantize(t)) {
        tq = 1e30;
        for (int r = 0; r < o.reps; r++) {
          const auto t0 = std::chrono::steady_clock::now();
          const std::vector<float> ones(o.uniform_imatrix ? size_t(s.cols) : 0, 1.0f);  // (cols)
          quants::quantize_rows(t, s.x.data(), q.data(), s.rows, s.cols, o.uniform_imatrix ? ones.data() : nullptr);
          tq = std::min(tq, seconds_since(t0));
        }
      } else {
        q = random_blocks(t, n, 7);
      }
      for (int r = 0; r < o.reps; r++) {
        const auto t0 = std::chrono::steady_clock::now();
        quants::dequantize_row(t, q.data(), y.data(), n);
        tdq = std::min(tdq, seconds_since(t0));
      }
      if (quants::can_quantize(t)) {
        double e = 0;
        for (int64_t i = 0; i < n; i++) e += double(s.x[size_t(i)] - y[size_t(i)]) * double(s.x[size_t(i)] - y[size_t(i)]);
        rmse = std::sqrt(e / ss);
      }
      const double qrate = tq > 0 ? double(n) / tq / 1e6 : -1, drate = double(n) / tdq / 1e6;
      const double gbs = double(n) * 4 / tdq / 1e9;
      if (o.json) {
        std::printf("{\"tensor\":\"%s\",\"source_type\":\"%s\",\"rows\":%lld,\"cols\":%lld,\"type\":\"%s\",", s.name.c_str(),
                    s.dtype.c_str(), (long long)s.rows, (long long)s.cols, dtype_name(t));
        if (rmse >= 0) std::printf("\"rmse_rel\":%.6g,\"quantize_melem_s\":%.1f,", rmse, qrate);
        std::printf("\"dequantize_melem_s\":%.1f,\"dequantize_gb_s\":%.2f}\n", drate, gbs);
      } else {
        char r[32] = "-", qr[32] = "-";
        if (rmse >= 0) std::snprintf(r, sizeof r, "%.6f", rmse), std::snprintf(qr, sizeof qr, "%.1f", qrate);
        std::printf("%-24s %-8s %-8s %10s %12s %12.1f %10.2f\n", s.name.c_str(), s.dtype.c_str(), dtype_name(t), r, qr,
                    drate, gbs);
      }
    }
  }
}

}  // namespace

void add_quantize(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("quantize", "Requantize a GGUF model with llama.cpp's mixture presets (Q4_K_M, Q8_0, ...)");
    struct Opts { std::string model, out, type; int threads = 0; bool pure = false, uniform_imatrix = false, dry_run = false, json = false; };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--model", o->model, "Input .gguf model (any type this engine reads)")->required();
    cmd->add_option("--out", o->out, "Output .gguf file (written atomically)");
    cmd->add_option("--type", o->type, "Preset: " + join(quant_preset_names()) + " (also Q3_K, Q4_K, Q5_K = _M)")->required();
    cmd->add_option("--threads", o->threads, "Threads (default: OpenMP's)");
    cmd->add_flag("--pure", o->pure, "Every quantizable tensor in the preset's type (no per-tensor mixture)");
    cmd->add_flag("--uniform-imatrix", o->uniform_imatrix,
                  "Use llama.cpp's importance-matrix quantizers with an importance of 1 everywhere (lower error; "
                  "the bytes of llama-quantize --imatrix with such a file)");
    cmd->add_flag("--dry-run", o->dry_run, "Print the type of every tensor and write nothing");
    cmd->add_flag("--json", o->json, "Summary as one JSON line on stdout");
    cmd->callback([o] {
      QuantPreset p;
      if (!quant_preset(o->type, &p)) fail("--type ", o->type, ": unknown preset; one of ", join(quant_preset_names()));
      if (o->dry_run) {
        GgufFile f = GgufFile::open(o->model);
        for (const TensorQuantPlan& t : plan_quantization(f, p, o->pure, o->uniform_imatrix)) {
          std::printf("%-40s %-8s -> %-8s%s\n", t.name.c_str(), dtype_name(t.from), dtype_name(t.to),
                      t.fallback ? "  (fallback: row length)" : "");
        }
        return;
      }
      if (o->out.empty()) fail("--out is required (or --dry-run)");
      check_out_path(o->model, o->out);
      const auto t0 = std::chrono::steady_clock::now();
      const QuantizeStats st = quantize_gguf(o->model, o->out, p, QuantizeOptions{o->pure, o->uniform_imatrix, o->threads});
      const double secs = seconds_since(t0);
      const double bpw = st.elements ? 8.0 * double(st.bytes_out) / double(st.elements) : 0;
      if (o->json) {
        std::printf("{\"out\":%s,\"type\":\"%s\",\"file_type\":%u,\"tensors\":%lld,\"requantized\":%lld,\"copied\":%lld,"
                    "\"fallbacks\":%lld,\"bytes_in\":%llu,\"bytes_out\":%llu,\"bpw\":%.4f,\"seconds\":%.3f}\n",
                    json_escape(o->out).c_str(), p.name.c_str(), p.ftype, (long long)st.tensors, (long long)st.requantized,
                    (long long)st.copied, (long long)st.fallbacks, (unsigned long long)st.bytes_in,
                    (unsigned long long)st.bytes_out, bpw, secs);
      }
      std::fprintf(stderr,
                   "wrote %s (%s): %lld tensors, %lld requantized, %lld copied, %lld fallbacks; %.1f MiB -> %.1f MiB "
                   "(%.2f bits per weight) in %.1f s\n",
                   o->out.c_str(), p.name.c_str(), (long long)st.tensors, (long long)st.requantized, (long long)st.copied,
                   (long long)st.fallbacks, double(st.bytes_in) / 1048576.0, double(st.bytes_out) / 1048576.0, bpw, secs);
    });
  }
  {
    auto* cmd = app.add_subcommand("quant-bench",
                                   "Quantization error and quantize/dequantize speed per GGUF type (one thread)");
    auto o = std::make_shared<BenchOpts>();
    cmd->add_option("--model", o->model, "A .gguf model whose tensors are the reference weights (default: synthetic)");
    cmd->add_option("--tensor", o->tensors, "Tensor of --model to use (repeatable; default output.weight)");
    cmd->add_option("--rows", o->rows, "Rows of each tensor (synthetic: rows of 4096)")->check(CLI::PositiveNumber);
    cmd->add_option("--types", o->types, "Types to measure (default: every weight type)")->delimiter(',');
    cmd->add_option("--reps", o->reps, "Timing repetitions (fastest is reported)")->check(CLI::PositiveNumber);
    cmd->add_flag("--json", o->json, "One JSON line per measurement");
    cmd->add_flag("--uniform-imatrix", o->uniform_imatrix, "Quantize with an all-ones importance matrix (as quantize)");
    cmd->callback([o] { run_quant_bench(*o); });
  }
}

}  // namespace lowrank::cli
