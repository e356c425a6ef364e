// Rendezvous: a TCPStore on the master, every rank announces itself under a key, and every
// rank waits until all keys are there, so a missing rank is named rather than waited for.
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "backends.h"
#include "dsv3/dist/communicator.h"

namespace dsv3::dist {
namespace {

// Waits until something accepts TCP connections at host:port, trying every 20 ms, or until
// `deadline`. c10d's TCPStore client sleeps a whole second after a refused connect, which
// made a rank that started before rank 0's store wait up to that second for nothing.
void WaitForListener(const std::string& host, int port, std::chrono::steady_clock::time_point deadline) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0) return;  // TCPStore will say
  while (std::chrono::steady_clock::now() < deadline) {
    bool up = false;
    for (addrinfo* a = res; a != nullptr && !up; a = a->ai_next) {
      const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) continue;
      up = connect(fd, a->ai_addr, a->ai_addrlen) == 0;
      close(fd);
    }
    if (up) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  freeaddrinfo(res);
}

}  // namespace

namespace internal {

GroupSpec SubgroupSpec(const GroupSpec& parent, const std::vector<int>& members, const std::string& tag) {
  GroupSpec sub = parent;
  sub.store = c10::make_intrusive<c10d::PrefixStore>("group/" + tag, parent.store);
  sub.size = static_cast<int>(members.size());
  sub.rank = -1;
  for (size_t i = 0; i < members.size(); ++i) {
    if (members[i] == parent.rank) sub.rank = static_cast<int>(i);
  }
  if (sub.rank < 0) throw std::runtime_error("rank " + std::to_string(parent.rank) + " is not in subgroup " + tag);
  sub.name = tag;
  return sub;
}

std::string DescribeFailure(const std::string& backend, const std::string& op, const Communicator& c,
                            const std::string& why) {
  std::ostringstream s;
  s << backend << " " << op << " on rank " << c.rank() << " of group '" << c.name() << "' (" << c.size()
    << " ranks) failed: " << why;
  return s.str();
}


namespace {

class DoneWork final : public Work {
 public:
  void Wait() override {}
};

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  std::string backend() const override { return "self"; }
  WorkHandle AllReduce(torch::Tensor, ReduceOp) override { return Done(); }
  WorkHandle ReduceScatter(torch::Tensor out, torch::Tensor in) override { return Copy(out, in); }
  WorkHandle AllGather(torch::Tensor out, torch::Tensor in) override { return Copy(out, in); }
  WorkHandle Broadcast(torch::Tensor, int) override { return Done(); }
  WorkHandle AllToAll(torch::Tensor out, torch::Tensor in, const std::vector<int64_t>&,
                      const std::vector<int64_t>&) override {
    return Copy(out, in);
  }
  WorkHandle Send(torch::Tensor, int peer, int) override { throw NoPeer("send", peer); }
  WorkHandle Recv(torch::Tensor, int peer, int) override { throw NoPeer("recv", peer); }
  void Barrier() override {}
  std::unique_ptr<Communicator> Subgroup(const std::vector<int>&, const std::string&) override {
    return std::make_unique<SelfCommunicator>();
  }

 private:
  static WorkHandle Done() { return std::make_shared<DoneWork>(); }
  static WorkHandle Copy(torch::Tensor out, const torch::Tensor& in) {
    if (!out.is_same(in)) out.copy_(in.view_as(out));
    return Done();
  }
  static std::logic_error NoPeer(const char* op, int peer) {
    return std::logic_error(std::string(op) + " to rank " + std::to_string(peer) + " of a one-rank group");
  }
  std::string name_ = "self";
};

}  // namespace
}  // namespace internal

std::unique_ptr<Communicator> MakeSelfCommunicator() { return std::make_unique<internal::SelfCommunicator>(); }

std::string ResolveBackend(const std::string& configured, bool cuda) {
  if (configured == "gloo") {
    if (!internal::HaveGloo()) {
      throw std::runtime_error("/distributed/backend: \"gloo\" is not in this build (LibTorch without c10d Gloo "
                               "headers); use \"nccl\"");
    }
    return "gloo";
  }
  if (configured == "nccl") {
    if (!internal::HaveNccl()) {
      throw std::runtime_error("/distributed/backend: \"nccl\" is not in this build (no nccl.h was found at build "
                               "time); use \"gloo\"");
    }
    if (!cuda) {
      throw std::runtime_error("/distributed/backend: \"nccl\" needs CUDA tensors, and this process has no CUDA "
                               "device (or its LibTorch is CPU-only); use \"gloo\" or \"deepspeed\" on the CPU");
    }
    return "nccl";
  }
  if (configured == "deepspeed") return ResolveBackend(cuda && internal::HaveNccl() ? "nccl" : "gloo", cuda);
  throw std::runtime_error("/distributed/backend: \"" + configured + "\" is not a backend; use nccl, gloo or deepspeed");
}

std::unique_ptr<Communicator> Connect(const LaunchInfo& launch, const ConnectOptions& options) {
  using Clock = std::chrono::steady_clock;
  const auto where = launch.master_addr + ":" + std::to_string(launch.master_port);
  std::ostringstream wait_text;
  wait_text << std::chrono::duration<double>(options.rendezvous_timeout).count() << " s";
  const std::string wait_s = wait_text.str();
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(launch.master_port);
  so.isServer = launch.rank == 0 && !launch.agent_store;
  so.waitWorkers = false;
  so.timeout = options.rendezvous_timeout;
  c10::intrusive_ptr<c10d::Store> tcp;
  if (!so.isServer) WaitForListener(launch.master_addr, launch.master_port, Clock::now() + options.rendezvous_timeout);
  try {
    tcp = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, so);
  } catch (const std::exception& e) {
    std::ostringstream s;
    s << "rendezvous: rank " << launch.rank << " of " << launch.world_size;
    if (so.isServer) {
      s << " could not host the store at " << where << " (is the port in use?): " << e.what();
    } else {
      s << " could not reach the store at " << where << " within " << wait_s
        << ": missing ranks: 0 (it hosts the store" << (launch.agent_store ? " through the launcher's agent" : "")
        << "); check MASTER_ADDR/MASTER_PORT. " << e.what();
    }
    throw std::runtime_error(s.str());
  }
  auto store = c10::make_intrusive<c10d::PrefixStore>("dsv3/" + launch.generation, tcp);
  const std::string arrived = "arrived/";
  store->set(arrived + std::to_string(launch.rank), std::vector<uint8_t>{1});
  std::vector<std::string> keys;
  for (int r = 0; r < launch.world_size; ++r) keys.push_back(arrived + std::to_string(r));
  // Every rank waits for every key. The store's host (rank 0) names the missing ranks under
  // "failed" when it gives up and keeps the store up a moment so the others read it; a rank
  // that loses the store reports the ranks missing at its last look.
  const auto deadline = Clock::now() + options.rendezvous_timeout;
  const auto missing_now = [&] {
    std::string list;
    int count = 0;
    for (int r = 0; r < launch.world_size; ++r) {
      if (!store->check({keys[static_cast<size_t>(r)]})) list += (count++ ? ", " : "") + std::to_string(r);
    }
    return std::to_string(count) + " of " + std::to_string(launch.world_size) +
           " ranks did not arrive: missing ranks: " + list;
  };
  struct RendezvousError : std::runtime_error {
    using std::runtime_error::runtime_error;
  };
  const auto fail = [&](const std::string& why) {
    throw RendezvousError("rendezvous at " + where + " failed after " + wait_s + ": " + why);
  };
  std::string last_missing = "the store's host went away";
  auto next_look = Clock::now();
  try {
    while (!store->check(keys)) {
      if (store->check({"failed"})) {
        const std::vector<uint8_t> v = store->get("failed");
        fail(std::string(v.begin(), v.end()));
      }
      if (Clock::now() >= next_look) {
        last_missing = missing_now();
        next_look = Clock::now() + std::chrono::seconds(1);
      }
      if (Clock::now() >= deadline) {
        const std::string missing = missing_now();
        if (so.isServer) {
          store->set("failed", std::vector<uint8_t>(missing.begin(), missing.end()));
          std::this_thread::sleep_for(std::chrono::seconds(2));
        }
        fail(missing);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  } catch (const RendezvousError&) {
    throw;
  } catch (const std::exception& e) {
    fail(last_missing + " (then the store closed: " + e.what() + ")");
  }
  internal::GroupSpec spec;
  spec.store = c10::make_intrusive<c10d::PrefixStore>("world", store);
  spec.rank = launch.rank;
  spec.size = launch.world_size;
  spec.name = "world";
  spec.options = options;
  spec.master_addr = launch.master_addr;
  if (options.backend == "nccl") return internal::Recorded(internal::MakeNccl(spec));
  if (options.backend == "gloo") return internal::Recorded(internal::MakeGloo(spec));
  throw std::runtime_error("unknown communicator backend \"" + options.backend + "\" (gloo or nccl)");
}

}  // namespace dsv3::dist
