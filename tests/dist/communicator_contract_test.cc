// The Communicator contract: every backend passes the same typed tests (as c10d runs every
// Store through one test file). Each backend's world runs its ranks as threads of this
// process: self (one rank), gloo (three ranks over a loopback TCPStore) and nccl (one rank
// per visible GPU; registered under the `gpu` label and skipped where no GPU is visible).
// Every expectation is computed for a world of any size, so one body holds them all.
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dsv3/dist/communicator.h"
#include "thread_world.h"

namespace dsv3 {
namespace {

struct SelfWorld {
  static std::string Name() { return "self"; }
  static int Ranks() { return 1; }
  static torch::Device Device(int) { return torch::kCPU; }
  template <typename F>
  static void Run(F fn) {
    auto c = dist::MakeSelfCommunicator();
    fn(*c);
  }
};

dist::ConnectOptions Backend(const std::string& backend) {
  dist::ConnectOptions o;
  o.backend = backend;
  return o;
}

struct GlooWorld {
  static std::string Name() { return "gloo"; }
  static int Ranks() { return 3; }
  static torch::Device Device(int) { return torch::kCPU; }
  template <typename F>
  static void Run(F fn) {
    test::InThreadWorld(Ranks(), Backend("gloo"), fn);
  }
};

struct NcclWorld {
  static std::string Name() { return "nccl"; }
  static int Ranks() { return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0; }
  static torch::Device Device(int rank) { return torch::Device(torch::kCUDA, static_cast<int8_t>(rank)); }
  template <typename F>
  static void Run(F fn) {
    test::InThreadWorld(Ranks(), Backend("nccl"), fn);
  }
};

template <typename World>
class CommunicatorContract : public ::testing::Test {
 protected:
  void SetUp() override {
    if (World::Ranks() == 0) GTEST_SKIP() << World::Name() << ": no GPU visible";
  }
};

using Worlds = ::testing::Types<SelfWorld, GlooWorld, NcclWorld>;
TYPED_TEST_SUITE(CommunicatorContract, Worlds, test::NamedByType);

torch::Tensor Cpu(const torch::Tensor& t) { return t.to(torch::kCPU); }

TYPED_TEST(CommunicatorContract, AllReduceSumsAndTakesTheMaximum) {
  TypeParam::Run([](dist::Communicator& c) {
    const int r = c.rank(), n = c.size();
    const auto dev = TypeParam::Device(r);
    EXPECT_EQ(n, TypeParam::Ranks());
    EXPECT_EQ(c.backend(), TypeParam::Name());
    torch::Tensor t = torch::full({4}, static_cast<float>(r + 1), dev);
    c.AllReduce(t)->Wait();
    EXPECT_TRUE(torch::equal(Cpu(t), torch::full({4}, n * (n + 1) / 2.0f)));
    torch::Tensor mx = torch::tensor({static_cast<double>(r)}, torch::TensorOptions().dtype(torch::kDouble).device(dev));
    c.AllReduce(mx, dist::ReduceOp::kMax)->Wait();
    EXPECT_EQ(Cpu(mx).item<double>(), n - 1.0);
    torch::Tensor mn = torch::tensor({static_cast<double>(r + 5)}, torch::TensorOptions().dtype(torch::kDouble).device(dev));
    c.AllReduce(mn, dist::ReduceOp::kMin)->Wait();
    EXPECT_EQ(Cpu(mn).item<double>(), 5.0);
  });
}

TYPED_TEST(CommunicatorContract, ReduceScatterAndAllGatherAreInverseLayouts) {
  TypeParam::Run([](dist::Communicator& c) {
    const int r = c.rank(), n = c.size();
    const auto dev = TypeParam::Device(r);
    // reduce-scatter: chunk r of the sum of every rank's input.
    const torch::Tensor in = torch::arange(2 * n, torch::kFloat).to(dev) * (r + 1);
    torch::Tensor out = torch::empty({2}, dev);
    c.ReduceScatter(out, in)->Wait();
    EXPECT_TRUE(torch::equal(Cpu(out), torch::arange(2 * n, torch::kFloat).narrow(0, 2 * r, 2) * (n * (n + 1) / 2)));
    // flat all-gather, in rank order.
    torch::Tensor all = torch::empty({n, 2}, dev);
    c.AllGather(all, torch::full({2}, static_cast<float>(r), dev))->Wait();
    EXPECT_TRUE(torch::equal(Cpu(all), torch::arange(n, torch::kFloat).repeat_interleave(2).view({n, 2})));
  });
}

TYPED_TEST(CommunicatorContract, BFloat16IsReducedAndGathered) {
  TypeParam::Run([](dist::Communicator& c) {
    const int r = c.rank(), n = c.size();
    const auto dev = TypeParam::Device(r);
    torch::Tensor h = torch::full({5}, 1.5f + r, dev).to(torch::kBFloat16);
    c.AllReduce(h)->Wait();
    EXPECT_TRUE(torch::equal(Cpu(h).to(torch::kFloat), torch::full({5}, 1.5f * n + n * (n - 1) / 2.0f)));
    torch::Tensor hall = torch::empty({2 * n}, torch::TensorOptions().dtype(torch::kBFloat16).device(dev));
    c.AllGather(hall, torch::full({2}, 0.25f * r, dev).to(torch::kBFloat16))->Wait();
    EXPECT_TRUE(torch::equal(Cpu(hall).to(torch::kFloat), (torch::arange(n, torch::kFloat) * 0.25f).repeat_interleave(2)));
  });
}

TYPED_TEST(CommunicatorContract, BroadcastCopiesTheRootsTensor) {
  TypeParam::Run([](dist::Communicator& c) {
    const int r = c.rank(), n = c.size();
    torch::Tensor b = torch::full({3}, static_cast<float>(r), TypeParam::Device(r));
    c.Broadcast(b, n - 1)->Wait();
    EXPECT_TRUE(torch::equal(Cpu(b), torch::full({3}, static_cast<float>(n - 1))));
  });
}

// A ring of sends (each rank to the next, from the previous), twice: the pairs match in
// issue order, whichever side gets there first; bfloat16 arrives bit for bit.
TYPED_TEST(CommunicatorContract, SendAndRecvPairUpInIssueOrder) {
  TypeParam::Run([](dist::Communicator& c) {
    const int r = c.rank(), n = c.size();
    const auto dev = TypeParam::Device(r);
    if (n == 1) {
      EXPECT_THROW(c.Send(torch::ones({1}, dev), 0), std::logic_error);
      return;
    }
    const int next = (r + 1) % n, prev = (r + n - 1) % n;
    for (int round = 0; round < 2; ++round) {
      const torch::Tensor out = torch::full({3}, 10.0f * r + round, dev).to(torch::kBFloat16);
      torch::Tensor in = torch::empty({3}, torch::TensorOptions().dtype(torch::kBFloat16).device(dev));
      dist::WorkHandle sent = c.Send(out, next);
      c.Recv(in, prev)->Wait();
      sent->Wait();
      EXPECT_TRUE(torch::equal(Cpu(in).to(torch::kFloat), torch::full({3}, 10.0f * prev + round)));
    }
  });
}

TYPED_TEST(CommunicatorContract, UnevenAllToAllDeliversRowsInRankOrder) {
  TypeParam::Run([](dist::Communicator& c) {
    const int r = c.rank(), n = c.size();
    const auto dev = TypeParam::Device(r);
    // rank r sends r + d + 1 rows to rank d, rows valued 10 r + d.
    std::vector<int64_t> send, recv;
    std::vector<torch::Tensor> rows;
    int64_t total = 0;
    for (int d = 0; d < n; ++d) {
      send.push_back(r + d + 1);
      recv.push_back(d + r + 1);
      total += d + r + 1;
      rows.push_back(torch::full({r + d + 1, 2}, 10.0f * r + d, dev));
    }
    torch::Tensor got = torch::empty({total, 2}, dev);
    c.AllToAll(got, torch::cat(rows), recv, send)->Wait();
    std::vector<torch::Tensor> expect;
    for (int s = 0; s < n; ++s) expect.push_back(torch::full({s + r + 1, 2}, 10.0f * s + r));
    EXPECT_TRUE(torch::equal(Cpu(got), torch::cat(expect)));
  });
}

TYPED_TEST(CommunicatorContract, SubgroupsReduceAmongTheirMembersOnly) {
  TypeParam::Run([](dist::Communicator& c) {
    const int r = c.rank(), n = c.size();
    std::vector<int> even;
    for (int i = 0; i < n; i += 2) even.push_back(i);
    if (r % 2 == 0) {
      auto sub = c.Subgroup(even, "even");
      EXPECT_EQ(sub->size(), static_cast<int>(even.size()));
      EXPECT_EQ(sub->rank(), r / 2);
      torch::Tensor x = torch::ones({1}, TypeParam::Device(r));
      sub->AllReduce(x)->Wait();
      EXPECT_EQ(Cpu(x).item<float>(), static_cast<float>(even.size()));
    }
    c.Barrier();
  });
}

}  // namespace
}  // namespace dsv3
