#include "dsv3/dist/faults.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#include "dsv3/common/env.h"
#include "dsv3/common/message_log.h"

namespace dsv3::dist {
namespace {

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(sep, start);
    const std::string part = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!part.empty()) out.push_back(part);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

TrainPhase ParsePhase(const std::string& v, const std::string& where) {
  for (TrainPhase p : {TrainPhase::kData, TrainPhase::kForward, TrainPhase::kBackward, TrainPhase::kOptimizer,
                       TrainPhase::kCheckpoint, TrainPhase::kEvaluation}) {
    if (v == TrainPhaseName(p)) return p;
  }
  throw std::invalid_argument(where + ": phase '" + v +
                              "' is not one of data, forward, backward, optimizer, checkpoint, evaluation");
}

double Number(const std::string& v, const std::string& where) {
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0') throw std::invalid_argument(where + ": '" + v + "' is not a number");
  return d;
}

Faults& Instance() {
  static Faults faults;
  return faults;
}

}  // namespace

std::vector<Fault> ParseFaults(const std::string& text) {
  std::vector<Fault> out;
  for (const std::string& item : Split(text, ';')) {
    const std::string where = std::string(env::kFault) + " '" + item + "'";
    const size_t colon = item.find(':');
    Fault f;
    f.kind = item.substr(0, colon);
    if (f.kind != "hang" && f.kind != "exit" && f.kind != "slow" && f.kind != "skip_collective" &&
        f.kind != "corrupt_checkpoint") {
      throw std::invalid_argument(where + ": '" + f.kind +
                                  "' is not a fault; use hang, exit, slow, skip_collective or corrupt_checkpoint");
    }
    if (colon != std::string::npos) {
      for (const std::string& kv : Split(item.substr(colon + 1), ',')) {
        const size_t eq = kv.find('=');
        if (eq == std::string::npos) throw std::invalid_argument(where + ": '" + kv + "' is not key=value");
        const std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
        if (k == "rank") f.rank = static_cast<int>(Number(v, where));
        else if (k == "step") f.step = static_cast<int64_t>(Number(v, where));
        else if (k == "phase") f.phase = ParsePhase(v, where);
        else if (k == "code") f.code = static_cast<int>(Number(v, where));
        else if (k == "factor") f.factor = Number(v, where);
        else if (k == "group") f.group = v;
        else if (k == "seq") f.seq = static_cast<int64_t>(Number(v, where));
        else if (k == "attempt") f.attempt = static_cast<int>(Number(v, where));
        else if (k == "job") f.job = static_cast<int64_t>(Number(v, where));
        else throw std::invalid_argument(where + ": unknown key '" + k + "'");
      }
    }
    const auto need = [&](bool ok, const char* what) {
      if (!ok) throw std::invalid_argument(where + ": " + f.kind + " needs " + what);
    };
    need(f.rank >= 0, "rank=R");
    if (f.kind == "hang" || f.kind == "exit" || f.kind == "corrupt_checkpoint") need(f.step >= 1, "step=N (>= 1)");
    if (f.kind == "exit") need(f.code >= 0 && f.code <= 255, "code=C (0..255)");
    if (f.kind == "slow") need(f.factor >= 1, "factor=F (>= 1)");
    if (f.kind == "skip_collective") need(!f.group.empty() && f.seq >= 1, "group=G and seq=N (>= 1)");
    out.push_back(f);
  }
  return out;
}

void Faults::Install(int rank) {
  const char* text = std::getenv(env::kFault);
  Faults& me = Instance();
  me.faults_.clear();
  if (text == nullptr || *text == '\0') return;
  const char* attempt_text = std::getenv(env::kAttempt);
  const int attempt = attempt_text != nullptr && *attempt_text != '\0' ? std::atoi(attempt_text) : 1;
  const char* job_text = std::getenv(env::kJobId);
  const int64_t job = job_text != nullptr && *job_text != '\0' ? std::atoll(job_text) : 0;
  for (const Fault& f : ParseFaults(text)) {
    if (f.rank == rank && (f.attempt == 0 || f.attempt == attempt) && (f.job == 0 || f.job == job)) {
      me.faults_.push_back(f);
    }
  }
  if (!me.faults_.empty()) {
    msg::Warning("rank " + std::to_string(rank) + ": " + env::kFault + "=" + text +
                 " is set: faults will be injected (a testing aid)");
  }
}

const Faults& Faults::Get() { return Instance(); }

const Fault* Faults::AtPhase(int64_t step, TrainPhase phase) const {
  for (const Fault& f : faults_) {
    if ((f.kind == "hang" || f.kind == "exit") && f.step == step && f.phase == phase) return &f;
  }
  return nullptr;
}

double Faults::SlowFactor() const {
  double factor = 1;
  for (const Fault& f : faults_) {
    if (f.kind == "slow") factor *= f.factor;
  }
  return factor;
}

bool Faults::SkipCollective(const std::string& group, uint64_t seq) const {
  for (const Fault& f : faults_) {
    if (f.kind == "skip_collective" && f.group == group && static_cast<uint64_t>(f.seq) == seq) return true;
  }
  return false;
}

bool Faults::CorruptCheckpoint(int64_t step) const {
  for (const Fault& f : faults_) {
    if (f.kind == "corrupt_checkpoint" && f.step == step) return true;
  }
  return false;
}

void HangForever(const std::string& why) {
  msg::Warning(why);
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

}  // namespace dsv3::dist
