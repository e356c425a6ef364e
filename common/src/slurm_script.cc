#include "dsv3/common/slurm_script.h"

#include <regex>
#include <sstream>

namespace dsv3::config {
namespace {

// A single-quoted shell word: nothing inside is expanded.
std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// #SBATCH lines are read by sbatch, not the shell; a newline would end the directive and
// start a command, so it is dropped rather than trusted.
std::string OneLine(const std::string& s) {
  std::string out;
  for (char c : s) out += (c == '\n' || c == '\r') ? ' ' : c;
  return out;
}

}  // namespace

std::optional<int64_t> SlurmTimeSeconds(const std::string& time) {
  std::smatch m;
  static const std::regex kMinutes(R"(^(\d+)$)"), kMinSec(R"(^(\d+):(\d{1,2})$)"),
      kHms(R"(^(\d+):(\d{1,2}):(\d{1,2})$)"), kDays(R"(^(\d+)-(\d{1,2})(?::(\d{1,2}))?(?::(\d{1,2}))?$)");
  const auto n = [&](size_t i) -> int64_t { return m[i].matched ? std::stoll(m[i].str()) : 0; };
  if (std::regex_match(time, m, kMinutes)) return n(1) * 60;
  if (std::regex_match(time, m, kMinSec)) return n(1) * 60 + n(2);
  if (std::regex_match(time, m, kHms)) return n(1) * 3600 + n(2) * 60 + n(3);
  if (std::regex_match(time, m, kDays)) return n(1) * 86400 + n(2) * 3600 + n(3) * 60 + n(4);
  return std::nullopt;
}

int64_t DefaultSignalMargin(const std::string& time) {
  const auto limit = SlurmTimeSeconds(time);
  if (!limit || *limit <= 0) return 0;
  return std::min<int64_t>(120, *limit / 2);
}

std::string RenderSlurmScript(const SlurmConfig& s, const SlurmScriptOptions& o) {
  std::ostringstream out;
  out << "#!/bin/bash\n";
  if (!o.header_comment.empty()) {
    std::istringstream lines(o.header_comment);
    for (std::string line; std::getline(lines, line);) out << "# " << line << "\n";
  }
  const auto directive = [&](const std::string& option, const std::string& value) {
    out << "#SBATCH --" << option << "=" << OneLine(value) << "\n";
  };
  directive("job-name", o.job_name.empty() ? s.job_name : o.job_name);
  // Unset fields leave Slurm's own defaults (its default partition, no GPUs).
  if (s.partition) directive("partition", *s.partition);
  directive("nodes", std::to_string(s.nodes));
  directive("ntasks-per-node", std::to_string(s.ntasks_per_node));
  directive("cpus-per-task", std::to_string(s.cpus_per_task));
  if (SlurmGpusPerNode(s) > 0) directive("gres", "gpu:" + std::to_string(SlurmGpusPerNode(s)));
  directive("time", s.time);
  directive("mem", s.mem);
  directive("output", s.output);
  directive("error", s.error);
  if (s.account && !s.account->empty()) directive("account", *s.account);
  if (s.qos && !s.qos->empty()) directive("qos", *s.qos);
  const int64_t margin = o.signal_margin_s >= 0 ? o.signal_margin_s : DefaultSignalMargin(s.time);
  if (margin > 0) {
    // Sent to every task (not the batch shell): the ranks checkpoint and stop in time.
    directive("signal", std::string(kTimeLimitSignalName) + "@" + std::to_string(margin));
  }
  if (!o.chdir.empty()) directive("chdir", o.chdir);
  for (const auto& extra : s.extra_args) out << "#SBATCH " << OneLine(extra) << "\n";
  out << "\nset -eu\n";
  for (const auto& [k, v] : o.env) {
    if (k != "MASTER_PORT" && k != "OPENBLAS_NUM_THREADS") out << "export " << k << "=" << ShellQuote(v) << "\n";
  }
  // One rendezvous port per Slurm job, the same on every node without a round trip.
  out << "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))\n";
  out << "export OPENBLAS_NUM_THREADS=1\n";
  out << "echo \"dsv3: slurm job $SLURM_JOB_ID: $SLURM_NNODES node(s) [$SLURM_JOB_NODELIST], "
         "$SLURM_NTASKS rank(s), rendezvous on port $MASTER_PORT\"\n";
  if (!o.rank_output.empty()) {
    const auto slash = o.rank_output.rfind('/');
    if (slash != std::string::npos && slash > 0) {
      out << "mkdir -p " << ShellQuote(o.rank_output.substr(0, slash)) << "\n";
    }
  }
  // --kill-on-bad-exit: one failed rank ends the step instead of leaving its peers blocked
  // in a collective until their timeout.
  out << "srun --kill-on-bad-exit=1";
  if (!o.rank_output.empty()) out << " --output=" << ShellQuote(o.rank_output) << " --open-mode=append";
  out << " " << ShellQuote(o.worker);
  for (const auto& a : o.worker_args) out << " " << ShellQuote(a);
  out << "\n";
  return out.str();
}

std::string DescribeSlurmLayout(const SlurmConfig& s) {
  std::ostringstream out;
  const int64_t world = s.nodes * s.ntasks_per_node;
  out << s.nodes << " node(s) x " << s.ntasks_per_node << " task(s) = " << world << " rank(s); "
      << s.cpus_per_task << " CPU(s) per task";
  if (SlurmGpusPerNode(s) > 0) out << ", " << SlurmGpusPerNode(s) << " GPU(s) per node (rank r uses GPU SLURM_LOCALID)";
  out << ";\n  rank = SLURM_PROCID (0.." << world - 1 << "), local rank = SLURM_LOCALID, "
      << "MASTER_ADDR = the first node of SLURM_JOB_NODELIST, MASTER_PORT = 20000 + job id % 20000";
  return out.str();
}

}  // namespace dsv3::config
