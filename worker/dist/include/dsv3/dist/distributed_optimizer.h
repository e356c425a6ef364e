// Data-parallel gradient reduction and the optimizer, sharded ZeRO-style (DeepSpeed's
// stages, Megatron's distributed-optimizer layout):
//   stage 0  plain data parallel: gradients all-reduced, every rank updates everything;
//   stage 1  optimizer state sharded: gradients reduce-scattered on the last micro-step,
//            each rank updates its shard, parameters all-gathered back;
//   stage 2  gradients sharded too: reduce-scattered every micro-step into the shard and
//            freed, so no rank keeps a full gradient across micro-steps;
//   stage 3  parameters sharded too: a decoder layer's parameters are all-gathered when it
//            runs (forward, and again for its recomputation in backward) and freed after
//            (Acquire / Release, which the trainer calls through the model's LayerParameters hook); the other parameters (embedding, head, norms, MTP) stay
//            gathered and are refreshed after each update.
// Master parameters (fp32) live in one flat buffer per group, laid out in buckets in
// backward order (reverse registration) of about bucket_elements each, padded to a multiple
// of the group size; rank r's shard is chunk r of every bucket. A bucket is reduced as soon
// as all of its parameters have their gradients (overlap_grad_reduce: launched from the
// gradient-accumulator hooks during backward, in bucket order on every rank); parameters
// that got no gradient this step are reduced as zeros when backward finishes.
// With mixed precision the hooks also fold each bf16/fp16 gradient into the fp32 master
// gradient; after the update the master copies back into the compute model.
//
// Groups: the parameters replicated over one communicator: the data-parallel replicas of
// tensor-parallel shards, the weights every tensor-parallel rank holds whole (over dp x tp),
// and with expert parallelism the ranks that hold the same experts. Each group's summed
// gradients are divided by its `grad_divisor`. Optimizer state is saved per rank as runs of
// whole-parameter elements (name, element offset), so a checkpoint loads into any layout.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "dsv3/dist/communicator.h"
#include "dsv3/dist/optimizer_update.h"

namespace dsv3::dist {

struct ParamEntry {
  std::string name;
  torch::Tensor master;   // fp32; becomes a view into the group's flat buffer
  torch::Tensor compute;  // the tensor backward fills (== master without mixed precision)
  bool decay = true;      // weight decay applies (matrices, not norms)
  // Where this tensor sits in the whole parameter when it is a shard (experts under expert
  // parallelism, a tensor-parallel block): elements [shard_start, shard_start + its size) of
  // dim shard_dim of a tensor shaped full_shape. Empty full_shape: the whole parameter.
  // Checkpointed optimizer state is addressed in whole-parameter elements, so it loads into
  // any other layout.
  std::vector<int64_t> full_shape;
  int64_t shard_dim = 0, shard_start = 0;
  int unit = -1;            // stage 3: the decoder layer it belongs to (-1: always gathered)
};

struct ParamGroup {
  std::string name;  // "dense", "expert": names the state in checkpoints
  std::vector<ParamEntry> params;
  Communicator* comm = nullptr;  // the ranks holding replicas of these parameters
  // The summed gradients are divided by this: the number of data-parallel batches, times
  // the tensor-parallel ranks that compute the same gradient for a replicated weight.
  double grad_divisor = 1;
};

struct ShardingOptions {
  int zero_stage = 0;       // 0-3
  bool overlap_grad_reduce = true;
  bool overlap_param_gather = true;
  bool offload = false;             // optimizer state and its update in host memory (GPU)
  int64_t bucket_elements = 25 << 20;
};

class DistributedOptimizer {
 public:
  // `world` spans every rank (grad norm, overflow checks). Registers gradient hooks.
  DistributedOptimizer(std::vector<ParamGroup> groups, OptimizerOptions optimizer, ShardingOptions sharding,
                       Communicator* world);
  ~DistributedOptimizer();

  // Before each micro-step's backward: `last` = the micro-step whose gradients complete the
  // step (stages 0 and 1 reduce only then).
  void BeginMicroStep(bool last);
  // After backward: launches the buckets the hooks did not, waits for this micro-step's
  // reductions.
  void FinishBackward();

  // The global L2 norm of the averaged gradient (every rank gets the same number; inf or
  // nan when a gradient overflowed).
  double GradNorm();
  void ScaleGrads(double factor);
  // One update with learning rate `lr` on the gradients times `grad_scale` (the clipping
  // factor, applied inside the fused update instead of a pass of its own), then the
  // parameters are gathered (stages 1, 2) and copied into the compute model. Zeroes the
  // gradients.
  void Step(double lr, double grad_scale = 1.0);
  // Drops this step's gradients without an update (skipped step).
  void ZeroGrad();

  // This rank's optimizer state: tensors plus metadata describing which parameter elements
  // they hold. Load takes the pieces of every rank's saved state (any sharding).
  std::vector<std::pair<std::string, torch::Tensor>> StateTensors() const;
  std::map<std::string, std::string> StateMetadata() const;
  // `read_rank(r)` returns rank r's saved tensors and metadata; `ranks` saved ranks.
  using ShardReader = std::function<std::pair<std::map<std::string, torch::Tensor>, std::map<std::string, std::string>>(int)>;
  void LoadState(int ranks, const ShardReader& read_rank);

  // Stage 3: gathers (Acquire) or frees (Release) the parameters of decoder layer `unit`.
  void Acquire(int unit);
  void Release(int unit);
  // Runs fn with every master parameter whole (stage 3 gathers them for the call: saving a
  // checkpoint); other stages hold them whole anyway.
  void WithFullMaster(const std::function<void()>& fn);

  // The groups whose replicas (the ranks of the group's communicator) hold master weights
  // that are not bit-identical: a fingerprint of each group's weights is compared over its
  // ranks (a collective on every group; every rank calls). Empty when all agree, and under
  // ZeRO-3, where no rank holds a whole replica.
  std::vector<std::string> DivergedReplicaGroups();
  int64_t replica_groups() const;  // groups with more than one replica

  int64_t state_bytes() const;   // optimizer state held by this rank
  int64_t grad_bytes() const;    // gradient buffers held between micro-steps by this rank
  int64_t param_bytes() const;   // master and compute parameter storage held between layers
  int64_t step_count() const { return step_; }

 private:
  struct Group;
  struct Bucket;
  // The constructor's steps (bucket_layout.cc), per group, then over all groups.
  void LayOutBuckets(Group& g) const;
  void AllocateParameters(Group& g) const;
  void AllocateOptimizerState(Group& g) const;
  void RegisterGradHooks();
  void ReleaseZero3Layers();
  void LaunchReady(Group& g);
  void Launch(Group& g, size_t bucket);
  void OnGradReady(size_t group, size_t param);
  void GatherBucket(Group& g, Bucket& b, bool wait);
  torch::Tensor StageBucket(Group& g, Bucket& b);

  std::vector<std::unique_ptr<Group>> groups_;
  OptimizerOptions opt_;
  ShardingOptions sh_;
  Communicator* world_;
  bool last_micro_ = true;
  int64_t step_ = 0;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // keep the hooks alive
};

}  // namespace dsv3::dist
