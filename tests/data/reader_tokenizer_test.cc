// Dolma reader edge cases and the tokenizers.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "data_test_util.h"
#include "dsv3/data/dolma_reader.h"
#include "dsv3/data/synth.h"
#include "dsv3/data/tokenizer.h"
#include "test_util.h"

namespace dsv3::data {
namespace {

using test::DolmaLine;
using test::TempDir;
using test::WriteFile;

std::vector<Document> ReadAll(const std::string& path, ReadStats* stats) {
  std::vector<Document> docs;
  *stats = ReadDolmaFile(path, [&](Document&& d) { docs.push_back(std::move(d)); });
  return docs;
}

TEST(DolmaReader, ReadsEveryExtensionCompressedOrNot) {
  TempDir dir;
  const std::string content = DolmaLine("a", "first") + DolmaLine("b", "second");
  for (const char* name : {"x.json", "x.jsonl", "x.json.gz", "x.jsonl.gz"}) {
    WriteFile(dir.path() / name, content);
    ReadStats stats;
    const auto docs = ReadAll((dir.path() / name).string(), &stats);
    ASSERT_EQ(docs.size(), 2u) << name;
    EXPECT_EQ(docs[1].text, "second");
    EXPECT_EQ(docs[1].id, "b");
    EXPECT_EQ(docs[1].line, 2);
    EXPECT_TRUE(stats.issues.empty()) << name;
  }
}

TEST(DolmaReader, BadLinesAreCountedWithFileAndLineAndSkipped) {
  TempDir dir;
  const std::string path = (dir.path() / "mixed.jsonl.gz").string();
  WriteFile(path, DolmaLine("1", "ok") + "\n   \n" + "{not json\n" + R"({"id": "3"})" + "\n" +
                      R"({"id": "4", "text": 5})" + "\n" + "[1,2]\n" + DolmaLine("7", "caf\u00e9 \U0001F600 \u4e2d\u6587") +
                      DolmaLine("8", "no trailing newline").substr(0, DolmaLine("8", "no trailing newline").size() - 1));
  ReadStats stats;
  const auto docs = ReadAll(path, &stats);
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[1].text, "caf\u00e9 \U0001F600 \u4e2d\u6587");  // UTF-8 kept byte for byte
  EXPECT_EQ(docs[2].text, "no trailing newline");
  EXPECT_EQ(stats.empty_lines, 2);
  std::vector<std::string> issues;
  for (const auto& i : stats.issues) issues.push_back(i.ToString());
  EXPECT_EQ(issues, (std::vector<std::string>{path + ":4: malformed JSON", path + ":5: no \"text\" field",
                                              path + ":6: \"text\" is not a string", path + ":7: not a JSON object"}));
}

TEST(DolmaReader, LinesLongerThanTheReadBufferArriveWhole) {
  TempDir dir;
  const std::string long_text(300000, 'x');
  WriteFile(dir.path() / "long.json.gz", DolmaLine("1", long_text) + DolmaLine("2", "short"));
  ReadStats stats;
  const auto docs = ReadAll((dir.path() / "long.json.gz").string(), &stats);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].text, long_text);
  EXPECT_EQ(docs[1].line, 2);
}

TEST(DolmaReader, TruncatedGzipIsReportedNotFatal) {
  TempDir dir;
  const auto full = dir.path() / "full.json.gz";
  WriteFile(full, test::DolmaDocs("t", 400));
  std::ifstream in(full, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto cut = dir.path() / "cut.json.gz";
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  ReadStats stats;
  const auto docs = ReadAll(cut.string(), &stats);
  EXPECT_GT(docs.size(), 0u);
  EXPECT_LT(docs.size(), 400u);
  ASSERT_EQ(stats.issues.size(), 1u);
  EXPECT_NE(stats.issues[0].message.find("truncated or corrupt gzip stream"), std::string::npos)
      << stats.issues[0].message;
  EXPECT_EQ(stats.issues[0].line, static_cast<int64_t>(docs.size()) + 1);
  ReadStats missing;
  ReadAll((dir.path() / "nope.json.gz").string(), &missing);
  ASSERT_EQ(missing.issues.size(), 1u);
  EXPECT_EQ(missing.issues[0].message, "cannot be opened");
}

TEST(DolmaReader, GlobsExpandSortedAndUnmatchedPatternsAreListed) {
  TempDir dir;
  for (const char* name : {"b.json.gz", "a.json.gz", "c.txt"}) WriteFile(dir.path() / name, DolmaLine("1", "x"));
  config::DataSource s;
  s.paths = {(dir.path() / "*.json.gz").string(), (dir.path() / "a.json.gz").string(),
             (dir.path() / "none-*.jsonl").string()};
  std::vector<std::string> unmatched;
  const auto files = ExpandSourceFiles(s, &unmatched);
  EXPECT_EQ(files, (std::vector<std::string>{(dir.path() / "a.json.gz").string(), (dir.path() / "b.json.gz").string()}));
  EXPECT_EQ(unmatched, std::vector<std::string>{(dir.path() / "none-*.jsonl").string()});
}

TEST(ByteTokenizer, RoundTripsUtf8AndHasSpecials) {
  config::TokenizerConfig cfg;
  const auto t = MakeTokenizer(cfg, 272);
  const std::string text = "Hello, caf\u00e9 \U0001F600\n\ttabs";
  const std::vector<int32_t> ids = t->Encode(text);
  EXPECT_EQ(ids.size(), text.size());  // one id per UTF-8 byte
  EXPECT_EQ(ids[0], 'H');
  EXPECT_EQ(t->Decode(ids), text);
  EXPECT_EQ(t->eos_id(), kByteEos);
  EXPECT_EQ(t->vocab_size(), 259);
  EXPECT_EQ(t->Decode({72, kByteEos, 105}), "Hi");  // specials decode to nothing
  EXPECT_EQ(t->Fingerprint(), "byte-v1");
  try {
    MakeTokenizer(cfg, 200);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()),
              "/model/vocab_size: 200 does not cover the byte tokenizer's 259 ids; set vocab_size to at least that");
  }
}

TEST(SentencePieceTokenizer, TrainsLoadsAndRoundTrips) {
  if (!HaveSentencePiece()) GTEST_SKIP() << "built without libsentencepiece";
  TempDir dir;
  SynthesizeDolma((dir.path() / "corpus").string(), 300, 1);
  const std::string text_file = (dir.path() / "sample.txt").string();
  {
    std::ofstream out(text_file);
    for (const char* subset : {"dolma_v1_6_cc", "dolma_v1_6_wikimedia", "dolma_v1_6_starcoder"}) {
      ReadDolmaFile((dir.path() / "corpus" / subset / "part-0000.json.gz").string(),
                    [&](Document&& d) { out << d.text << "\n"; });
    }
  }
  const std::string prefix = (dir.path() / "sp").string();
  TrainSentencePiece(text_file, prefix, 400, 2);
  config::TokenizerConfig cfg;
  cfg.type = "sentencepiece";
  cfg.model = prefix + ".model";
  const auto t = MakeTokenizer(cfg, 400);
  EXPECT_EQ(t->vocab_size(), 400);
  EXPECT_EQ(t->eos_id(), 1);
  const std::string sample = "The old museum was built by Ada in 1906. def add_3(x): caf\u00e9";
  const auto ids = t->Encode(sample);
  EXPECT_LT(ids.size(), sample.size() * 3 / 4);  // pieces, not bytes
  EXPECT_EQ(t->Decode(ids), sample);
  EXPECT_EQ(t->Fingerprint().rfind("sentencepiece-", 0), 0u);
  cfg.model = (dir.path() / "missing.model").string();
  EXPECT_THROW(MakeTokenizer(cfg, 400), std::runtime_error);
  cfg.model = prefix + ".model";
  EXPECT_THROW(MakeTokenizer(cfg, 399), std::runtime_error);  // vocab does not cover it
}

TEST(Synth, DeterministicDolmaFilesWithLearnableStructure) {
  TempDir a, b, c;
  SynthesizeDolma(a.path().string(), 50, 3);
  SynthesizeDolma(b.path().string(), 50, 3);
  SynthesizeDolma(c.path().string(), 50, 4);
  const auto read = [](const std::filesystem::path& p) {
    std::vector<std::string> texts;
    ReadStats stats = ReadDolmaFile(p.string(), [&](Document&& d) { texts.push_back(d.text); });
    EXPECT_TRUE(stats.issues.empty());
    return texts;
  };
  int subsets = 0;
  for (const auto& subset : config::DolmaSubsets()) {
    const auto file = std::filesystem::path(subset) / "part-0000.json.gz";
    const auto texts = read(a.path() / file);
    EXPECT_EQ(texts.size(), 50u) << subset;
    EXPECT_EQ(texts, read(b.path() / file)) << subset;
    EXPECT_NE(texts, read(c.path() / file)) << subset;
    ++subsets;
  }
  EXPECT_EQ(subsets, 13);
  // The arithmetic is true: "Compute a + b = c." lines check out.
  int checked = 0;
  for (const auto& text : read(a.path() / "dolma_v1_6_openwebmath" / "part-0000.json.gz")) {
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
      long long x, y, z;
      char op;
      if (std::sscanf(line.c_str(), "Compute %lld %c %lld = %lld.", &x, &op, &y, &z) == 4) {
        EXPECT_EQ(op == '+' ? x + y : op == '-' ? x - y : x * y, z) << line;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 100);
}

}  // namespace
}  // namespace dsv3::data
