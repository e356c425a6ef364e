#include "capabilities.h"

#include <stdexcept>
#include <string>

#include "dsv3/dist/communicator.h"
#include "dsv3/model/torch_compat.h"

namespace dsv3::train {

void RefuseWhatThisBuildCannot(const config::Config& c, const TrainerOptions& opt) {
  const config::DistributedConfig& dc = c.distributed;
  if (c.training.use_fp8) {
    throw std::runtime_error("/training/use_fp8: true is not supported by this build: FP8 training needs FP8 matmul "
                             "kernels (Hopper GPUs), which dsv3 does not have yet; use use_bf16");
  }
  if (c.model.moe.use_deep_ep) {
    throw std::runtime_error("/model/moe/use_deep_ep: true needs DeepEP (a CUDA all-to-all library) that this build "
                             "does not include; set it to false");
  }
  if (c.model.mla.use_flash_mla && !c.model.mla.fallback_to_dense) {
    throw std::runtime_error("/model/mla/use_flash_mla: FlashMLA kernels are not in this build and fallback_to_dense "
                             "is false; set one of them");
  }
  if (dc.pipeline_parallel_size == 2 && dc.pipeline_schedule == "interleaved_1f1b" &&
      dist::ResolveBackend(dc.backend, torch::cuda::is_available()) == "nccl") {
    // With two stages both directions carry activations and gradients; NCCL's point-to-point
    // messages have no tags to tell them apart (Gloo's do).
    throw std::runtime_error("/distributed/pipeline_schedule: \"interleaved_1f1b\" with pipeline_parallel_size 2 "
                             "is not supported on nccl; use \"1f1b\", or 3 or more stages");
  }
  if (c.deepspeed.enabled && c.deepspeed.offload_param_device == "cpu" && torch::cuda::is_available()) {
    throw std::runtime_error("/deepspeed/zero_optimization/offload_param/device: \"cpu\" (parameter offload) is not "
                             "supported yet on GPUs; use \"none\" (offload_optimizer is supported)");
  }
  if (opt.world_size > 1 && opt.world == nullptr) {
    throw std::runtime_error("world size " + std::to_string(opt.world_size) + " needs a communicator (dist::Connect)");
  }
  if (opt.world != nullptr && (opt.world->size() != opt.world_size || opt.world->rank() != opt.rank)) {
    throw std::runtime_error("the communicator's rank/size do not match the trainer's rank " +
                             std::to_string(opt.rank) + " of " + std::to_string(opt.world_size));
  }
  const int64_t grid = dc.data_parallel_size * dc.tensor_parallel_size * dc.pipeline_parallel_size;
  if (grid != opt.world_size) {
    throw std::runtime_error("/distributed/data_parallel_size: " + std::to_string(dc.data_parallel_size) +
                             " x tensor_parallel_size " + std::to_string(dc.tensor_parallel_size) +
                             " x pipeline_parallel_size " + std::to_string(dc.pipeline_parallel_size) +
                             " does not match the world of " + std::to_string(opt.world_size) +
                             " ranks (load the config with the launcher's world size)");
  }
  if (!c.training.train_steps) throw std::runtime_error("/training/train_steps: could not be resolved");
}

void RequireFp16Matmul(torch::Device device) {
  // Found out on this device at start-up instead of failing mid-step.
  try {
    const auto half = torch::TensorOptions().dtype(torch::kHalf).device(device);
    (void)torch::matmul(torch::ones({2, 2}, half), torch::ones({2, 2}, half));
  } catch (const std::exception&) {
    throw std::runtime_error("/training/use_fp16: fp16 matmuls are not available on " + device.str() +
                             " with this LibTorch (" + model::compat::TorchVersion() +
                             "); use use_bf16 (or fp32) here, fp16 on a GPU");
  }
}

}  // namespace dsv3::train
