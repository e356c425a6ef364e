#include "dsv3/dist/flight_recorder.h"

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <sstream>
#include <thread>

#include "dsv3/common/message_log.h"
#include "dsv3/dist/faults.h"

namespace dsv3::dist {

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const char* TrainPhaseName(TrainPhase phase) {
  switch (phase) {
    case TrainPhase::kSetup: return "setup";
    case TrainPhase::kData: return "data";
    case TrainPhase::kForward: return "forward";
    case TrainPhase::kBackward: return "backward";
    case TrainPhase::kOptimizer: return "optimizer";
    case TrainPhase::kCheckpoint: return "checkpoint";
    case TrainPhase::kEvaluation: return "evaluation";
    case TrainPhase::kDone: return "done";
  }
  return "?";
}

const char* OpStateName(OpState state) {
  switch (state) {
    case OpState::kEnqueued: return "enqueued";
    case OpState::kWaiting: return "waiting";
    case OpState::kCompleted: return "completed";
    case OpState::kFailed: return "failed";
  }
  return "?";
}

FlightRecorder& FlightRecorder::Get() {
  static FlightRecorder* recorder = new FlightRecorder();  // never destroyed: read by signal-time dumps
  return *recorder;
}

void FlightRecorder::TouchLocked() { progress_.last_progress_ms = UnixMs(); }

void FlightRecorder::SetPhase(TrainPhase phase) {
  int64_t step = 0;
  double spent = 0;
  TrainPhase previous;
  {
    std::lock_guard<std::mutex> lock(mu_);
    previous = progress_.phase;
    const int64_t now = UnixMs();
    spent = (now - progress_.phase_since_ms) / 1000.0;
    progress_.phase = phase;
    progress_.phase_since_ms = now;
    TouchLocked();
    step = progress_.step;
  }
  const Faults& faults = Faults::Get();
  if (!faults.any()) return;
  // slow: the compute phases take `factor` times as long.
  if ((previous == TrainPhase::kForward || previous == TrainPhase::kBackward) && faults.SlowFactor() > 1) {
    std::this_thread::sleep_for(std::chrono::duration<double>(spent * (faults.SlowFactor() - 1)));
  }
  if (const Fault* f = faults.AtPhase(step, phase)) {
    const std::string where = std::string(TrainPhaseName(phase)) + " of step " + std::to_string(step);
    if (f->kind == "hang") {
      HangForever("DSV3_FAULT: hanging the training thread in " + where + " (at unix ms " + std::to_string(UnixMs()) +
                  ")");
    }
    msg::Warning("DSV3_FAULT: exiting with status " + std::to_string(f->code) + " in " + where);
    std::_Exit(f->code);
  }
}

void FlightRecorder::SetStep(int64_t step, int64_t micro_step) {
  std::lock_guard<std::mutex> lock(mu_);
  progress_.step = step;
  progress_.micro_step = micro_step;
  TouchLocked();
}

void FlightRecorder::SetMicroStep(int64_t micro_step) {
  std::lock_guard<std::mutex> lock(mu_);
  progress_.micro_step = micro_step;
  TouchLocked();
}

void FlightRecorder::StepDone(double step_seconds, double busy_seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  progress_.last_step_seconds = step_seconds;
  progress_.last_busy_seconds = busy_seconds;
}

int FlightRecorder::AddGroup(const std::string& name, int size, int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  Group g;
  g.progress.name = name;
  g.progress.size = size;
  g.rank = rank;
  g.ring.resize(kRingSize);
  groups_.push_back(std::move(g));
  return static_cast<int>(groups_.size()) - 1;
}

OpRecord* FlightRecorder::FindLocked(Group& g, uint64_t seq) {
  OpRecord& r = g.ring[seq % kRingSize];
  return r.seq == seq ? &r : nullptr;
}

uint64_t FlightRecorder::Enter(int group, const std::string& op, const std::string& tensor, double bytes,
                               const std::string& peers) {
  std::lock_guard<std::mutex> lock(mu_);
  Group& g = groups_.at(static_cast<size_t>(group));
  const uint64_t seq = ++g.progress.entered;
  g.progress.last_op = op;
  OpRecord& r = g.ring[seq % kRingSize];
  r = OpRecord{};
  r.seq = seq;
  r.op = op;
  r.tensor = tensor;
  r.bytes = bytes;
  r.peers = peers;
  r.enqueued_ms = UnixMs();
  TouchLocked();
  return seq;
}

void FlightRecorder::WaitStarted(int group, uint64_t seq) {
  std::lock_guard<std::mutex> lock(mu_);
  Group& g = groups_.at(static_cast<size_t>(group));
  if (OpRecord* r = FindLocked(g, seq)) {
    if (r->state != OpState::kEnqueued) return;  // waited before
    r->state = OpState::kWaiting;
    r->wait_started_ms = UnixMs();
    g.progress.waiting_seq = seq;
    g.progress.waiting_op = r->op;
    g.progress.waiting_since_ms = r->wait_started_ms;
  }
}

void FlightRecorder::Ended(int group, uint64_t seq, OpState state) {
  std::lock_guard<std::mutex> lock(mu_);
  Group& g = groups_.at(static_cast<size_t>(group));
  if (OpRecord* r = FindLocked(g, seq)) {
    if (r->state == OpState::kCompleted || r->state == OpState::kFailed) return;
    r->state = state;
    r->ended_ms = UnixMs();
  }
  if (g.progress.waiting_seq == seq) {
    g.progress.waiting_seq = 0;
    g.progress.waiting_op.clear();
    g.progress.waiting_since_ms = 0;
  }
  if (state != OpState::kFailed && seq > g.progress.completed) g.progress.completed = seq;
  TouchLocked();
}

ProgressSnapshot FlightRecorder::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  ProgressSnapshot s = progress_;
  for (const Group& g : groups_) s.groups.push_back(g.progress);
  return s;
}

namespace {

std::string Stamp(int64_t unix_ms) {
  if (unix_ms == 0) return "-";
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(unix_ms % 1000));
  return buf;
}

}  // namespace

std::string FlightRecorder::Dump() const {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = UnixMs();
  std::ostringstream o;
  o << "progress: step " << progress_.step << ", micro-step " << progress_.micro_step << ", phase "
    << TrainPhaseName(progress_.phase) << " for " << (now - progress_.phase_since_ms) / 1000.0 << " s"
    << "; last step " << progress_.last_step_seconds << " s (" << progress_.last_busy_seconds
    << " s not waiting for peers); training thread's last sign of life " << (now - progress_.last_progress_ms) / 1000.0
    << " s ago (times are UTC)\n";
  for (const Group& g : groups_) {
    const GroupProgress& p = g.progress;
    o << "\ngroup " << p.name << " (" << p.size << " ranks, this rank is " << g.rank << "): entered #" << p.entered
      << ", completed #" << p.completed;
    if (p.waiting_seq > 0) {
      o << ", waiting in " << p.waiting_op << " #" << p.waiting_seq << " for " << (now - p.waiting_since_ms) / 1000.0
        << " s";
    }
    o << "\n";
    const uint64_t first = p.entered > kRingSize ? p.entered - kRingSize + 1 : 1;
    for (uint64_t seq = first; seq <= p.entered; ++seq) {
      const OpRecord& r = g.ring[seq % kRingSize];
      if (r.seq != seq) continue;
      char line[512];
      std::snprintf(line, sizeof(line), "  #%-6" PRIu64 " %-14s %-22s %12.0f B %-8s enqueued %s wait %s end %s  %s\n",
                    r.seq, r.op.c_str(), r.tensor.c_str(), r.bytes, r.peers.empty() ? "all" : r.peers.c_str(),
                    Stamp(r.enqueued_ms).c_str(), Stamp(r.wait_started_ms).c_str(), Stamp(r.ended_ms).c_str(),
                    OpStateName(r.state));
      o << line;
    }
  }
  return o.str();
}

}  // namespace dsv3::dist
