// How the job verbs show jobs to people: state names, durations, times, table rows,
// sparklines and the detail view of `dsv3ctl status`; and JSON for scripts.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <google/protobuf/message.h>

#include "dsv3/v1/controller.pb.h"

namespace dsv3::cli {

// A message as JSON text (proto field names).
std::string ToJsonText(const google::protobuf::Message& m);
// "RUNNING", "COMPLETED", ... and whether the state is final.
std::string StateName(v1::JobState s);
bool IsTerminal(v1::JobState s);
// "1h 02m", "3m 05s", "12s"; "-" for an unknown duration.
std::string Duration(double seconds);
// `v` with `digits` decimals.
std::string Fixed(double v, int digits);
// Local time of a Unix time in milliseconds ("-" for 0).
std::string TimeOf(int64_t unix_ms);
double NowSeconds();
// The header and the row of a job in `dsv3ctl list`.
inline const std::vector<std::string> kJobHeader = {"ID", "NAME", "STATE", "STEP", "LOSS", "TOK/S", "ETA", "AGE"};
// One row under kJobHeader; the state coloured when `color` (UseColor).
std::vector<std::string> JobRow(const v1::Job& j, bool color = false);
// "▁▂▃▄▅▆▇█" over the value range.
std::string Sparkline(const std::vector<double>& values);
// The detail view of `dsv3ctl status JOB`.
void PrintJobDetail(const v1::Job& j, std::ostream& os);

}  // namespace dsv3::cli
