// Experiment: llama.cpp's tokenization of a SentencePiece GGUF whose scores are all -1000 (what
// gguf-py's LlamaHfVocab writes when a model has tokenizer.json but no tokenizer.model) versus
// the same vocabulary with lowrank's merge-rank scores. Copies IN.gguf to OUT.gguf with every
// tokenizer.ggml.scores entry set to -1000.
//   g++ -std=c++20 -O2 -Isrc dev/spm_flat_scores.cpp build/liblowrank_io.a build/liblowrank_core.a -fopenmp -o /tmp/spm_flat
#include <cstdio>
#include <vector>

#include "io/gguf.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: spm_flat_scores IN.gguf OUT.gguf\n");
    return 2;
  }
  lowrank::GgufFile f = lowrank::GgufFile::open(argv[1]);
  lowrank::GgufWriter w;
  for (const auto& [k, v] : f.metadata()) w.set_raw(k, v);
  std::vector<float> scores(f.get_string_array("tokenizer.ggml.tokens").size(), -1000.0f);
  w.set_f32_array("tokenizer.ggml.scores", scores);
  w.write(argv[2]);
  return 0;
}
