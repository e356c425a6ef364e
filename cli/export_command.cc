#include "export_command.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "dsv3/ckpt/manifest.h"
#include "dsv3/common/config_io.h"
#include "dsv3/common/hf_import.h"
#include "dsv3/data/tokenizer.h"
#include "output.h"
#include "progress.h"

namespace dsv3::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Copies `from` to `to` in 8 MiB pieces, with a progress bar on `progress_out` (nullptr: none);
// "" or what went wrong.
std::string CopyWithProgress(const fs::path& from, const fs::path& to, std::ostream* progress_out) {
  std::ifstream in(from, std::ios::binary);
  if (!in) return "cannot read " + from.string();
  std::error_code ec;
  const double total = static_cast<double>(fs::file_size(from, ec));
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  if (!out) return "cannot write " + to.string();
  Progress progress(progress_out, "copying the weights", total, "B");
  std::vector<char> buf(8 << 20);
  double done = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const std::streamsize n = in.gcount();
    if (n <= 0) break;
    if (!out.write(buf.data(), n)) return "cannot write " + to.string() + " (disk full?)";
    done += static_cast<double>(n);
    progress.Update(done);
  }
  out.close();
  if (!out || in.bad()) return "cannot write " + to.string();
  return "";
}

// HF's generate() starts with bos_token_id and stops at eos_token_id: the ids of the
// tokenizer the model was trained with (without them HF falls back to 0 and 1). "" or why not.
std::string AddTokenIds(const config::Config& cfg, json& hf) {
  try {
    const std::unique_ptr<data::Tokenizer> tokenizer = data::MakeTokenizer(cfg.data.tokenizer, cfg.model.vocab_size);
    hf["bos_token_id"] = tokenizer->bos_id();
    hf["eos_token_id"] = tokenizer->eos_id();
    hf["pad_token_id"] = tokenizer->pad_id() >= 0 ? json(tokenizer->pad_id()) : json();
  } catch (const std::exception& e) {
    return std::string("config.json needs the tokenizer's BOS/EOS/PAD ids: ") + e.what();
  }
  return "";
}

}  // namespace

void AddExportCommand(CLI::App& app, CliContext& ctx) {
  struct State {
    std::string checkpoint, out;
    OutputFormat format = OutputFormat::kText;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = app.add_subcommand(
      "export-hf", "Write a checkpoint as a HuggingFace folder (config.json + model.safetensors): DeepseekV3 for "
      "sigmoid routers, DeepseekV2 for softmax ones; what neither computes the same is refused");
  verb->add_option("CHECKPOINT", st->checkpoint, "Checkpoint directory (or checkpoint_<step>.pt)")->required();
  verb->add_option("OUT_DIR", st->out, "Output folder")->required();
  AddOutputOption(*verb, st->format);
  verb->callback([st, &ctx] {
    ctx.exit_code = kExitFailed;
    json manifest;
    try {
      manifest = ckpt::VerifyCheckpoint(st->checkpoint);
    } catch (const std::exception& e) {
      ctx.err << "dsv3ctl export-hf: " << e.what() << "\n";
      return;
    }
    const config::LoadResult cfg = config::LoadConfigText(manifest["config"].dump());
    if (!cfg.ok()) {
      ctx.err << "dsv3ctl export-hf: the checkpoint's config does not load: " << cfg.errors[0].ToString() << "\n";
      return;
    }
    config::HfImportResult hf = config::ExportHfConfig(cfg.config);
    if (!hf.ok()) {
      for (const auto& e : hf.errors) ctx.err << "dsv3ctl export-hf: " << e.ToString() << "\n";
      return;
    }
    if (const std::string why = AddTokenIds(cfg.config, hf.config); !why.empty()) {
      ctx.err << "dsv3ctl export-hf: " << why << "\n";
      return;
    }
    hf.config["torch_dtype"] = "float32";  // checkpoints hold the fp32 master weights
    std::error_code ec;
    fs::create_directories(st->out, ec);
    const fs::path model = fs::path(ckpt::ResolveCheckpointPath(st->checkpoint)) / "model.safetensors";
    // The weights already carry HF's names and layout (see worker/model/hf_state_dict.h).
    const std::string error = CopyWithProgress(model, fs::path(st->out) / "model.safetensors",
                                               ProgressStream(st->format == OutputFormat::kJson));
    if (!error.empty()) {
      ctx.err << "dsv3ctl export-hf: " << error << "\n";
      return;
    }
    std::ofstream(fs::path(st->out) / "config.json") << hf.config.dump(2) << "\n";
    if (st->format == OutputFormat::kJson) {
      ctx.out << json{{"out", st->out}, {"step", manifest["step"]}, {"config", hf.config}}.dump(2) << "\n";
    } else {
      ctx.out << "exported step " << manifest["step"].get<int64_t>() << " to " << st->out
              << " (config.json, model.safetensors)\n";
    }
    ctx.exit_code = kExitOk;
  });
}

}  // namespace dsv3::cli
