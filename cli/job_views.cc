#include "job_views.h"

#include <chrono>
#include <cmath>
#include <ctime>
#include <sstream>

#include <google/protobuf/util/json_util.h>

#include "output.h"

namespace dsv3::cli {

std::string ToJsonText(const google::protobuf::Message& m) {
  std::string text;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &text, o);
  return text;
}

std::string StateName(v1::JobState s) {
  std::string n = v1::JobState_Name(s);
  const std::string prefix = "JOB_STATE_";
  return n.rfind(prefix, 0) == 0 ? n.substr(prefix.size()) : n;
}

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_COMPLETED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELED;
}

std::string Duration(double seconds) {
  if (seconds < 0) seconds = 0;
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return std::to_string(s / 60) + "m" + std::to_string(s % 60) + "s";
  if (s < 86400) return std::to_string(s / 3600) + "h" + std::to_string(s % 3600 / 60) + "m";
  return std::to_string(s / 86400) + "d" + std::to_string(s % 86400 / 3600) + "h";
}

std::string Fixed(double v, int digits) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(digits);
  os << v;
  return os.str();
}

std::string TimeOf(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  const std::time_t t = unix_ms / 1000;
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The SGR colour of a state on a terminal: green done, red failed, yellow restarting,
// cyan running, default otherwise.
const char* StateColor(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_COMPLETED: return "32";
    case v1::JOB_STATE_FAILED: return "31";
    case v1::JOB_STATE_RESTARTING: return "33";
    case v1::JOB_STATE_RUNNING: return "36";
    default: return "39";
  }
}

std::vector<std::string> JobRow(const v1::Job& j, bool color) {
  const double age = NowSeconds() - j.created_unix_ms() / 1000.0;
  return {std::to_string(j.id()),
          j.name(),
          Paint(StateName(j.state()), StateColor(j.state()), color),
          std::to_string(j.step()) + "/" + std::to_string(j.total_steps()),
          j.has_loss() ? Fixed(j.loss(), 4) : "-",
          j.has_tokens_per_second() ? HumanCount(j.tokens_per_second()) : "-",
          j.has_eta_seconds() ? Duration(j.eta_seconds()) : "-",
          Duration(age)};
}


std::string Sparkline(const std::vector<double>& values) {
  static const char* kBars[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  if (values.empty()) return "";
  double lo = values[0], hi = values[0];
  for (double v : values) {
    if (std::isfinite(v)) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  std::string out;
  for (double v : values) {
    const int level = !std::isfinite(v) || hi <= lo ? 0 : static_cast<int>(std::lround((v - lo) / (hi - lo) * 7));
    out += kBars[std::clamp(level, 0, 7)];
  }
  return out;
}

void PrintJobDetail(const v1::Job& j, std::ostream& os) {
  os << RenderTable({kJobHeader, JobRow(j)});
  os << "\nstate:        " << StateName(j.state()) << (j.state_reason().empty() ? "" : " (" + j.state_reason() + ")")
     << "\nowner:        " << j.owner() << "\nranks:        " << j.num_ranks() << ", attempt " << j.attempt()
     << ", restarts " << j.restarts() << " of " << j.max_restarts() << "\nsubmitted:    " << TimeOf(j.created_unix_ms())
     << "\nstarted:      " << TimeOf(j.started_unix_ms()) << "\nfinished:     " << TimeOf(j.finished_unix_ms())
     << "\njob folder:   " << j.job_dir() << "\noutputs:      " << j.output_dir()
     << "\ncheckpoints:  " << j.checkpoint_dir() << "\ntensorboard:  "
     << (j.tensorboard_dir().empty() ? "off" : j.tensorboard_dir()) << "\n";
  if (!j.weights_from().empty()) os << "weights from: " << j.weights_from() << " (HF)\n";
  if (!j.last_checkpoint().empty()) {
    os << "last checkpoint: step " << j.last_checkpoint_step() << " " << j.last_checkpoint() << "\n";
  }
  if (j.allocations_size() > 0) {
    // The chain of Slurm jobs, one per attempt: a time limit continues in a new one.
    os << j.allocations(0).allocator() << " jobs:   ";
    for (int i = 0; i < j.allocations_size(); ++i) {
      const auto& a = j.allocations(i);
      os << (i > 0 ? " -> " : "") << a.external_id() << " " << a.state() << (a.reason().empty() ? "" : " (" + a.reason() + ")");
    }
    os << "\n";
  }
  if (j.has_val_loss()) os << "val loss:     " << Fixed(j.val_loss(), 4) << " (ppl " << Fixed(std::exp(j.val_loss()), 2) << ")\n";
  if (j.ranks_size() > 0) {
    std::vector<std::vector<std::string>> rows = {{"RANK", "PID", "HOST", "STATE", "EXIT", "PHASE", "STEP S", "LOG"}};
    for (const auto& r : j.ranks()) {
      // The watchdog's view: the rank's phase, and its last step time (work, not waiting).
      std::string step_s = "-";
      if (r.step_seconds() > 0) {
        step_s = Fixed(r.step_seconds(), 3) + " (" + Fixed(r.busy_seconds(), 3) + " busy";
        if (r.busy_ratio() > 0) step_s += ", " + Fixed(r.busy_ratio(), 2) + "x median";
        step_s += r.straggler() ? ", STRAGGLER)" : ")";
      }
      rows.push_back({std::to_string(r.rank()), std::to_string(r.pid()), r.host(), r.state(),
                      r.state() == "exited" ? std::to_string(r.exit_code()) : "-", r.phase().empty() ? "-" : r.phase(),
                      step_s, r.log_path()});
    }
    os << "\n" << RenderTable(rows);
  }
  if (j.history_size() > 0) {
    os << "\nhistory:\n";
    for (const auto& h : j.history()) {
      os << "  " << TimeOf(h.time_unix_ms()) << "  " << StateName(h.state()) << "  " << h.reason() << "\n";
    }
  }
  if (j.evaluations_size() > 0) {
    const auto& e = j.evaluations(j.evaluations_size() - 1);
    os << "\nlast evaluation (step " << e.step() << "): loss " << Fixed(e.loss(), 4) << ", perplexity "
       << Fixed(e.perplexity(), 2) << "\n";
    if (!e.sample().empty()) os << "  sample: " << e.sample() << "\n";
  }
  if (j.last_log_lines_size() > 0) {
    os << "\nlast log lines:\n";
    for (const auto& l : j.last_log_lines()) os << "  " << l << "\n";
  }
}


}  // namespace dsv3::cli
