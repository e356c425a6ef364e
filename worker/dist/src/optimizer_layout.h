// The private layout of DistributedOptimizer, shared by its files: how each parameter group
// sits in one flat buffer of buckets, and which elements of each bucket this rank owns.
//   bucket_layout.cc   builds the layout (constructor) and accounts its memory;
//   grad_reduction.cc  gradient hooks, bucket all-reduce / reduce-scatter, norm and scaling;
//   optimizer_step.cc  the update of this rank's elements and the parameter gather after it;
//   state_io.cc        optimizer state as checkpoint pieces, loadable into any sharding;
//   zero3_gather.cc    stage 3: gathering and freeing a layer's parameters around its use;
//   replica_check.cc   whether every rank of a group holds the same master weights.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "dsv3/dist/distributed_optimizer.h"

namespace dsv3::dist {

inline int64_t RoundUp(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

struct DistributedOptimizer::Bucket {
  int64_t start = 0, numel = 0, chunk = 0;  // region of the flat buffer (padded); chunk = numel / group size
  int64_t shard_offset = 0;                 // where this rank's chunk sits in the shard buffers
  int unit = -1;                            // stage 3: the layer whose parameters it holds
  std::vector<size_t> params;
  size_t pending = 0;
  bool launched = false;
  WorkHandle work;
  torch::Tensor staging, received;  // stage 2: the bucket's gradients in flight
  torch::Tensor full;               // stage 3: the gathered parameters (compute dtype) while acquired
};

struct DistributedOptimizer::Group {
  ParamGroup spec;
  std::vector<int64_t> offset;     // per parameter, in the flat buffer (padded layout)
  std::vector<int64_t> numel;      // per parameter (stage 3 frees the tensors themselves)
  std::vector<std::vector<int64_t>> shape;
  std::vector<size_t> bucket_of;   // per parameter
  std::vector<char> seen;          // per parameter: gradient arrived this micro-step
  std::vector<Bucket> buckets;
  size_t next_launch = 0;
  bool reducing = false;           // this micro-step's gradients are reduced
  int64_t total = 0;               // flat elements, padding included
  // Master weights: the whole flat buffer, or (stage 3) only this rank's chunks, in shard
  // order; compute_shard is their copy in the compute dtype (the same tensor in fp32).
  torch::Tensor flat_master, compute_shard;
  torch::Tensor flat_grad;                 // stages 0 and 1
  torch::Tensor shard_grad;              // stages 1 and 2: this rank's chunks
  torch::Tensor exp_avg, exp_avg_sq, decay;  // over the update range
  int64_t update_numel = 0;
  torch::Device state_device = torch::kCPU;

  int rank() const { return spec.comm->rank(); }
  int size() const { return spec.comm->size(); }
  // Elements of this rank's shard: one chunk of every bucket.
  int64_t ShardNumel() const { return buckets.empty() ? 0 : buckets.back().shard_offset + buckets.back().chunk; }

  // The elements this rank updates in bucket b: (first flat index, count, state offset).
  struct Range {
    int64_t flat, count, state;
  };
  Range UpdateRange(const Bucket& b, int stage) const {
    if (stage == 0) return {b.start, b.numel, b.start};
    return {b.start + rank() * b.chunk, b.chunk, b.shard_offset};
  }
  // The elements this rank owns (stage 0 too: for norms and checkpoints).
  Range OwnedRange(const Bucket& b) const { return {b.start + rank() * b.chunk, b.chunk, b.shard_offset}; }
  torch::Tensor GradOf(const Bucket& b, int stage) const {
    const Range r = UpdateRange(b, stage);
    return stage == 0 ? flat_grad.narrow(0, r.flat, r.count) : shard_grad.narrow(0, r.state, r.count);
  }
  // This rank's updated chunk of bucket b in the master buffer.
  torch::Tensor MasterChunk(const Bucket& b, int stage) const {
    if (stage == 3) return flat_master.narrow(0, b.shard_offset, b.chunk);
    const Range r = UpdateRange(b, stage);
    return flat_master.narrow(0, r.flat, r.count);
  }
  torch::Tensor OwnedGrad(const Bucket& b, int stage) const {
    const Range r = OwnedRange(b);
    return stage == 0 ? flat_grad.narrow(0, r.flat, r.count) : shard_grad.narrow(0, r.state, r.count);
  }

  // Pieces of parameters inside [flat, flat + count): (param, element offset in the
  // parameter, count, offset from `flat`).
  struct Piece {
    size_t param;
    int64_t in_param, count, at;
  };
  std::vector<Piece> PiecesIn(const Bucket& b, int64_t flat, int64_t count) const {
    std::vector<Piece> out;
    for (size_t p : b.params) {
      const int64_t lo = std::max(flat, offset[p]);
      const int64_t hi = std::min(flat + count, offset[p] + numel[p]);
      if (lo < hi) out.push_back({p, lo - offset[p], hi - lo, lo - flat});
    }
    return out;
  }
};

}  // namespace dsv3::dist
