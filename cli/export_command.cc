#include "export_command.h"

#include <filesystem>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "dsv3/ckpt/manifest.h"
#include "dsv3/common/config_io.h"
#include "dsv3/common/hf_import.h"
#include "output.h"

namespace dsv3::cli {

namespace fs = std::filesystem;
using nlohmann::json;

void AddExportCommand(CLI::App& app, CliContext& ctx) {
  struct State {
    std::string checkpoint, out;
    OutputFormat format = OutputFormat::kText;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = app.add_subcommand(
      "export-hf", "Write a checkpoint as a HuggingFace DeepseekV3 folder (config.json + model.safetensors)");
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
      for (const auto& e : hf.errors) ctx.err << "dsv3ctl export-hf: cannot express in HF DeepseekV3: " << e.ToString() << "\n";
      return;
    }
    hf.config["torch_dtype"] = "float32";  // checkpoints hold the fp32 master weights
    std::error_code ec;
    fs::create_directories(st->out, ec);
    const fs::path model = fs::path(ckpt::ResolveCheckpointPath(st->checkpoint)) / "model.safetensors";
    // The weights already carry HF's names and layout (see worker/model/hf_state_dict.h).
    fs::copy_file(model, fs::path(st->out) / "model.safetensors", fs::copy_options::overwrite_existing, ec);
    if (ec) {
      ctx.err << "dsv3ctl export-hf: cannot write " << st->out << "/model.safetensors: " << ec.message() << "\n";
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
