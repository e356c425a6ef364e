#include "data_commands.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "dsv3/common/config_io.h"
#include "dsv3/data/dolma_reader.h"
#include "dsv3/data/pipeline.h"
#include "dsv3/data/shard_cache.h"
#include "dsv3/data/synth.h"
#include "dsv3/data/tokenizer.h"
#include "output.h"
#include "progress.h"

namespace dsv3::cli {
namespace {

using nlohmann::json;

std::optional<config::Config> LoadOrReport(const std::string& file, CliContext& ctx) {
  config::LoadResult r = config::LoadConfigFile(file);
  if (r.ok()) return r.config;
  for (const auto& e : r.errors) ctx.err << file << ": " << e.ToString() << "\n";
  ctx.exit_code = kExitFailed;
  return std::nullopt;
}

void AddSynth(CLI::App& parent, CliContext& ctx) {
  struct State {
    std::string out;
    int64_t docs = 2000;
    uint64_t seed = 0;
    OutputFormat format = OutputFormat::kText;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = parent.add_subcommand("synth", "Write a synthetic corpus in Dolma v1.6 format for all 13 sources");
  verb->add_option("OUT", st->out, "Output folder (one subfolder per Dolma subset)")->required();
  verb->add_option("--docs", st->docs, "Documents per source (~0.3 KB of text each)")->check(CLI::PositiveNumber)->default_str("2000");
  verb->add_option("--seed", st->seed, "Random seed")->default_str("0");
  AddOutputOption(*verb, st->format);
  verb->callback([st, &ctx] {
    std::optional<Progress> progress;  // its total comes with the first report
    data::SynthReport r;
    try {
      r = data::SynthesizeDolma(st->out, st->docs, st->seed, [&](int64_t done, int64_t total) {
        if (!progress) {
          progress.emplace(ProgressStream(st->format == OutputFormat::kJson), "synth", static_cast<double>(total),
                           "documents");
        }
        progress->Update(static_cast<double>(done));
      });
      if (progress) progress->Finish();
    } catch (const std::exception& e) {
      ctx.err << "dsv3ctl data synth: " << e.what() << "\n";
      ctx.exit_code = kExitFailed;
      return;
    }
    if (st->format == OutputFormat::kJson) {
      ctx.out << json{{"documents", r.documents}, {"bytes", r.bytes}, {"files", r.files}}.dump(2) << "\n";
    } else {
      ctx.out << "wrote " << r.documents << " documents (" << HumanBytes(static_cast<double>(r.bytes))
              << " of JSON) in " << r.files.size() << " files under " << st->out << "\n";
    }
    ctx.exit_code = kExitOk;
  });
}

void AddPrepare(CLI::App& parent, CliContext& ctx) {
  struct State {
    std::string config;
    int workers = 0;
    OutputFormat format = OutputFormat::kText;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = parent.add_subcommand("prepare", "Tokenize every source into the token-shard cache (cache_dir)");
  verb->add_option("CONFIG", st->config, "Config file")->required();
  verb->add_option("--workers", st->workers, "Threads (default: data.preprocessing.num_workers)")
      ->check(CLI::PositiveNumber);
  AddOutputOption(*verb, st->format);
  verb->callback([st, &ctx] {
    auto cfg = LoadOrReport(st->config, ctx);
    if (!cfg) return;
    const int workers = st->workers > 0 ? st->workers : static_cast<int>(cfg->data.preprocessing.num_workers);
    data::PrepareReport r;
    try {
      const auto tokenizer = data::MakeTokenizer(cfg->data.tokenizer, cfg->model.vocab_size);
      std::optional<Progress> progress;  // its total comes with the first report
      r = data::PrepareCache(*cfg, *tokenizer, workers, [&](const data::PrepareProgress& p) {
        if (!progress) {
          progress.emplace(ProgressStream(st->format == OutputFormat::kJson), "prepare",
                           static_cast<double>(p.files_total), "files");
        }
        const double rate = p.seconds > 0 ? static_cast<double>(p.bytes) / p.seconds : 0;
        const double eta = p.files_done > 0 ? p.seconds * static_cast<double>(p.files_total - p.files_done) /
                                                  static_cast<double>(p.files_done)
                                            : 0;
        char note[200];
        std::snprintf(note, sizeof note, "| %lld documents, %s tokens, %s/s, ETA %.0f s",
                      static_cast<long long>(p.documents), HumanCount(static_cast<double>(p.tokens)).c_str(),
                      HumanBytes(rate).c_str(), eta);
        progress->Update(static_cast<double>(p.files_done), note);
      });
      if (progress) progress->Finish();
    } catch (const std::exception& e) {
      ctx.err << st->config << ": " << e.what() << "\n";
      ctx.exit_code = kExitFailed;
      return;
    }
    ctx.exit_code = r.ok() ? kExitOk : kExitFailed;
    if (st->format == OutputFormat::kJson) {
      json issues = json::array();
      for (const auto& i : r.issues) issues.push_back(i.ToString());
      ctx.out << json{{"files", r.files_total},       {"prepared", r.files_prepared}, {"cached", r.files_cached},
                      {"documents", r.documents},     {"tokens", r.tokens},           {"bytes", r.bytes},
                      {"seconds", r.seconds},         {"workers", workers},           {"issues", issues},
                      {"errors", r.errors}}
                         .dump(2)
              << "\n";
      return;
    }
    for (const auto& e : r.errors) ctx.err << st->config << ": " << e << "\n";
    if (!r.ok()) return;
    const size_t shown = std::min<size_t>(r.issues.size(), 20);
    for (size_t i = 0; i < shown; ++i) ctx.err << "warning: " << r.issues[i].ToString() << "\n";
    if (r.issues.size() > shown) ctx.err << "warning: ... and " << r.issues.size() - shown << " more\n";
    ctx.out << r.files_total << " files: " << r.files_prepared << " tokenized, " << r.files_cached
            << " already cached; " << r.documents << " documents, " << Grouped(r.tokens) << " tokens from "
            << HumanBytes(static_cast<double>(r.bytes)) << " in " << r.seconds << " s with " << workers
            << (workers == 1 ? " thread" : " threads");
    if (r.seconds > 0 && r.bytes > 0) {
      ctx.out << " (" << HumanBytes(static_cast<double>(r.bytes) / r.seconds) << "/s)";
    }
    ctx.out << "; cache: " << cfg->data.cache_dir << "\n";
  });
}

void AddTrainTokenizer(CLI::App& parent, CliContext& ctx) {
  struct State {
    std::string config, out;
    int64_t vocab = 0;
    double sample_mb = 50;
    OutputFormat format = OutputFormat::kText;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = parent.add_subcommand(
      "train-tokenizer", "Train a SentencePiece model on a sample of the configured sources");
  verb->add_option("CONFIG", st->config, "Config file")->required();
  verb->add_option("--vocab", st->vocab, "Vocabulary size")->required()->check(CLI::Range(int64_t{300}, int64_t{1000000}));
  verb->add_option("-o,--out", st->out, "Model prefix (default data/tokenizer/dolma_<vocab/1000>k)");
  verb->add_option("--sample-mb", st->sample_mb, "Text to sample, spread over the sources by weight")
      ->check(CLI::PositiveNumber)
      ->default_str("50");
  AddOutputOption(*verb, st->format);
  verb->callback([st, &ctx] {
    auto cfg = LoadOrReport(st->config, ctx);
    if (!cfg) return;
    if (!data::HaveSentencePiece()) {
      ctx.err << "dsv3ctl data train-tokenizer: this build has no libsentencepiece\n";
      ctx.exit_code = kExitFailed;
      return;
    }
    const std::string prefix =
        st->out.empty() ? "data/tokenizer/dolma_" + std::to_string(st->vocab / 1000) + "k" : st->out;
    std::filesystem::create_directories(std::filesystem::path(prefix).parent_path().empty()
                                            ? std::filesystem::path(".")
                                            : std::filesystem::path(prefix).parent_path());
    const std::string sample_path = prefix + ".sample.txt";
    std::ostream* progress_out = ProgressStream(st->format == OutputFormat::kJson);
    int64_t sampled = 0;
    {
      double planned = 0;
      for (const auto& source : cfg->data.sources) planned += st->sample_mb * 1e6 * source.weight;
      Progress progress(progress_out, "sampling text", planned, "B");
      std::ofstream sample(sample_path);
      for (const auto& source : cfg->data.sources) {
        const int64_t budget = static_cast<int64_t>(st->sample_mb * 1e6 * source.weight);
        int64_t taken = 0;
        for (const auto& file : data::ExpandSourceFiles(source, nullptr)) {
          if (taken >= budget) break;
          data::ReadDolmaFile(file, [&](data::Document&& doc) {
            if (taken >= budget) return;
            sample << doc.text << "\n";  // SentencePiece reads one sentence per line
            taken += static_cast<int64_t>(doc.text.size());
            progress.Update(static_cast<double>(sampled + taken));
          });
        }
        sampled += taken;
      }
    }
    // SentencePiece says nothing while it trains (minutes on a large sample): a spinner does.
    std::atomic<bool> training{true};
    std::thread spinner;
    if (progress_out != nullptr) {
      spinner = std::thread([&] {
        Progress progress(progress_out, "training SentencePiece");
        while (training.load()) {
          progress.Update(0);
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
      });
    }
    const auto stop_spinner = [&] {
      training.store(false);
      if (spinner.joinable()) spinner.join();
    };
    try {
      data::TrainSentencePiece(sample_path, prefix, st->vocab, 2);
    } catch (const std::exception& e) {
      stop_spinner();
      ctx.err << "dsv3ctl data train-tokenizer: " << e.what() << "\n";
      ctx.exit_code = kExitFailed;
      return;
    }
    stop_spinner();
    std::filesystem::remove(sample_path);
    if (st->format == OutputFormat::kJson) {
      ctx.out << json{{"model", prefix + ".model"}, {"vocab", st->vocab}, {"sampled_bytes", sampled}}.dump(2) << "\n";
    } else {
      ctx.out << "trained " << prefix << ".model (" << st->vocab << " pieces) on "
              << HumanBytes(static_cast<double>(sampled)) << " of text; set data.tokenizer to "
              << "{\"type\": \"sentencepiece\", \"model\": \"" << prefix << ".model\"} and model.vocab_size >= "
              << st->vocab << "\n";
    }
    ctx.exit_code = kExitOk;
  });
}

void AddSample(CLI::App& parent, CliContext& ctx) {
  struct State {
    std::string config;
    int64_t count = 3;
    OutputFormat format = OutputFormat::kText;
  };
  auto st = std::make_shared<State>();
  CLI::App* verb = parent.add_subcommand("sample", "Show the first training windows the mixture yields, decoded");
  verb->add_option("CONFIG", st->config, "Config file")->required();
  verb->add_option("--count", st->count, "Windows to show")->check(CLI::PositiveNumber)->default_str("3");
  AddOutputOption(*verb, st->format);
  verb->callback([st, &ctx] {
    auto cfg = LoadOrReport(st->config, ctx);
    if (!cfg) return;
    try {
      data::DataPipeline p = data::OpenDataPipeline(*cfg);
      const data::Batch b = p.sampler->NextBatch(st->count, 0, 1);
      json out = json::array();
      for (int64_t r = 0; r < b.rows; ++r) {
        const std::vector<int32_t> ids(b.tokens.begin() + r * b.width, b.tokens.begin() + (r + 1) * b.width);
        const std::string source = p.sampler->sources()[static_cast<size_t>(b.sources[static_cast<size_t>(r)])].name;
        if (st->format == OutputFormat::kJson) {
          out.push_back({{"source", source}, {"tokens", ids}, {"text", p.tokenizer->Decode(ids)}});
        } else {
          ctx.out << "--- window " << r << " (" << source << ", " << ids.size() << " tokens)\n"
                  << p.tokenizer->Decode(ids) << "\n";
        }
      }
      if (st->format == OutputFormat::kJson) ctx.out << out.dump(2) << "\n";
      ctx.exit_code = kExitOk;
    } catch (const std::exception& e) {
      ctx.err << st->config << ": " << e.what() << "\n";
      ctx.exit_code = kExitFailed;
    }
  });
}

}  // namespace

void AddDataCommands(CLI::App& app, CliContext& ctx) {
  CLI::App* data = app.add_subcommand("data", "Synthesize, tokenize and inspect training data");
  data->require_subcommand(1);
  AddSynth(*data, ctx);
  AddPrepare(*data, ctx);
  AddTrainTokenizer(*data, ctx);
  AddSample(*data, ctx);
}

}  // namespace dsv3::cli
