// `dsv3-worker generate SOURCE ...`: samples from a checkpoint or a HF directory on this
// machine (what `dsv3ctl generate` runs). argv[0] is "generate".
#pragma once

namespace dsv3::worker {

int RunGenerate(int argc, char** argv);

}  // namespace dsv3::worker
