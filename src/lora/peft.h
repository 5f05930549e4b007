// PEFT adapter directories: adapter_config.json + adapter_model.safetensors.
#pragma once
#include <memory>
#include <string>

#include "lora/adapter.h"

namespace lowrank {

class Model;

// Reads a PEFT LoRA dir (F32/F16/BF16 tensors, keys base_model.model.<module>.lora_A.weight);
// shapes are checked when the adapter is attached to a model.
std::shared_ptr<Adapter> load_peft_adapter(const std::string& dir);
// Writes the PEFT dir (config with PEFT's keys sorted, 2-space indent; F32 tensors with
// PEFT's names). Each file is written atomically.
void save_peft_adapter(const Adapter& a, const std::string& dir);
// Splits "DIR[:SCALE]".
std::pair<std::string, float> parse_adapter_arg(const std::string& arg);

}  // namespace lowrank
