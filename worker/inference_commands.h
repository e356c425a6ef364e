// What dsv3-worker does besides training, on this machine, one process (what `dsv3ctl
// generate` and `dsv3ctl eval` run): argv[0] is the verb.
//   generate CHECKPOINT|HF_DIR --prompt ...   samples through the compressed MLA cache
//   eval CHECKPOINT|HF_DIR [--config X] [--text FILE]
//                                             the config's validation, or a text's likelihood
#pragma once

namespace dsv3::worker {

int RunGenerate(int argc, char** argv);
int RunEval(int argc, char** argv);

}  // namespace dsv3::worker
