// The typed job plan: what dsv3d reads of a config (launcher, threads, the slurm section),
// parsed once at submit, stored with the job, and given to jobs stored before it existed.
#include <sqlite3.h>

#include <gtest/gtest.h>

#include "dsv3/common/config_io.h"
#include "jobs/job_config.h"
#include "store/job_plan.h"
#include "store/job_store.h"
#include "test_util.h"

namespace dsv3::server {
namespace {

TEST(JobPlan, JobsAskForSlurmByTheSectionOrTheLauncher) {
  config::Config c;
  EXPECT_FALSE(PlanFromConfig(c).WantsSlurm());
  c.slurm.enabled = true;
  EXPECT_TRUE(PlanFromConfig(c).WantsSlurm());
  c.slurm.enabled = false;
  c.distributed.launcher = "slurm";
  EXPECT_TRUE(PlanFromConfig(c).WantsSlurm());
  c.distributed.launcher = "torchrun";
  EXPECT_FALSE(PlanFromConfig(c).WantsSlurm());
}

TEST(JobPlan, IsParsedOnceAtSubmitAndABadSectionIsAConfigProblem) {
  const std::string nano = test::ReadFile(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_nano.json");
  auto config = nlohmann::json::parse(nano, nullptr, true, true);
  config["slurm"] = {{"enabled", true}, {"nodes", 2}, {"ntasks_per_node", 1}, {"partition", "cpu"}};
  config["training"]["intra_op_threads"] = 3;
  PreparedConfig p = PrepareJobConfig(config.dump(), 2, "", "/tmp");
  ASSERT_TRUE(p.ok()) << p.errors.front().path << ": " << p.errors.front().message;
  EXPECT_TRUE(p.plan.WantsSlurm());
  EXPECT_EQ(p.plan.intra_op_threads, 3);
  EXPECT_EQ(p.plan.slurm.nodes, 2);
  EXPECT_EQ(p.plan.slurm.partition, "cpu");

  // What a raw peek into the JSON once took for "no Slurm" is now refused with its field.
  config["slurm"]["enabled"] = "yes";
  p = PrepareJobConfig(config.dump(), 2, "", "/tmp");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.errors.front().path, "/slurm/enabled");
  EXPECT_EQ(p.errors.front().code, kProblemInvalidConfig);
  EXPECT_FALSE(PrepareJobConfig("not json", 1, "", "/tmp").ok());
}

TEST(JobPlan, RoundTripsThroughTheStoreEncoding) {
  JobPlan plan;
  plan.launcher = "slurm";
  plan.intra_op_threads = 4;
  plan.slurm.enabled = true;
  plan.slurm.nodes = 3;
  plan.slurm.ntasks_per_node = 2;
  plan.slurm.account = "proj";
  plan.slurm.extra_args = {"--exclusive"};
  const auto back = PlanFromJson(PlanToJson(plan));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(PlanToJson(*back), PlanToJson(plan));
  EXPECT_EQ(back->slurm.account, std::optional<std::string>("proj"));
  EXPECT_EQ(back->slurm.qos, std::nullopt);
  EXPECT_EQ(back->slurm.extra_args, std::vector<std::string>{"--exclusive"});
  EXPECT_FALSE(PlanFromJson("").has_value());
  EXPECT_FALSE(PlanFromJson(R"({"launcher": 1, "intra_op_threads": 0, "slurm": {}})").has_value());
  EXPECT_FALSE(PlanFromJson(R"({"launcher": "", "intra_op_threads": 0, "slurm": {"nodes": 0}})").has_value());
}

// The section's codec is the config schema's: its rules and unknown-key check, named by field.
TEST(JobPlan, TheSlurmSectionIsReadByTheConfigSchema) {
  std::vector<config::Diagnostic> errors;
  const config::SlurmConfig s =
      config::SlurmFromJson(nlohmann::json{{"nodes", 0}, {"partitoin", "cpu"}, {"time", "1:00:00"}}, errors);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0].path, "/slurm/nodes");
  EXPECT_EQ(errors[1].path, "/slurm/partitoin");
  EXPECT_NE(errors[1].message.find("did you mean \"partition\""), std::string::npos) << errors[1].message;
  EXPECT_EQ(s.time, "1:00:00");
  EXPECT_EQ(s.nodes, 1);  // a field in error keeps its default
  errors.clear();
  (void)config::SlurmFromJson(nlohmann::json::array(), errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].path, "/slurm");
}

TEST(JobPlan, IsStoredWithTheJobAndBackfilledForOlderRows) {
  test::TempDir dir;
  const std::string path = (dir.path() / "jobs.db").string();
  const std::string nano = test::ReadFile(std::string(DSV3_SOURCE_DIR) + "/configs/train_config_nano.json");
  auto config = nlohmann::json::parse(nano, nullptr, true, true);
  config["slurm"] = {{"enabled", true}, {"nodes", 1}, {"ntasks_per_node", 1}};
  int64_t id = 0;
  {
    auto store = JobStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    JobRecord job;
    job.name = "planned";
    job.config_json = config.dump();
    job.plan.launcher = "slurm";
    job.plan.intra_op_threads = 2;
    ASSERT_TRUE((*store)->CreateJob(job).ok());
    id = job.id;
    EXPECT_EQ((*store)->GetJob(id)->plan.intra_op_threads, 2);
  }
  // A row as a store before schema 4 left it: no plan. Reopening gives it its config's plan.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE jobs SET plan_json=''", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  auto store = JobStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  const auto job = (*store)->GetJob(id);
  ASSERT_TRUE(job.has_value());
  EXPECT_TRUE(job->plan.WantsSlurm());
  EXPECT_EQ(job->plan.intra_op_threads, 0);  // the config sets none
}

}  // namespace
}  // namespace dsv3::server
